//! Error messages that name what actually failed.

/// An error and its causes, `a: b: c`, for errors whose `Display` leaves the
/// cause out (`tokio-postgres`: "error performing TLS handshake"; `hyper`:
/// "client error (Connect)"), so that a message names what actually failed.
/// Causes from these clients never hold the credentials.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let shown = cause.to_string();
        // Some errors repeat their cause in their own message; say it once.
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        next = cause.source();
    }
    text
}
