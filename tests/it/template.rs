//! The SAM application: cfn-lint (which runs the SAM transform) accepts it, and
//! it configures exactly the variables the function reads.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn cfn_lint_accepts_the_template() {
    let out = Command::new("cfn-lint")
        .arg("template.yaml")
        .current_dir(root())
        .output()
        .expect("cfn-lint is installed (pip install cfn-lint)");
    assert!(
        out.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn template_sets_only_variables_the_function_reads() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    for needle in [
        "Runtime: provided.al2023",
        "Architectures: [arm64]",
        "BuildMethod: rust-cargolambda",
        "Type: ScheduleV2",
        "Input: '{\"action\": \"refresh_due\"}'",
        "DefaultAuthorizer: AWS_IAM",
        "PayloadFormatVersion: \"2.0\"",
        "Path: /experiments/{id}/exposures",
        "Path: /experiments/{id}/exposures/refresh",
        "LogFormat: JSON",
    ] {
        assert!(template.contains(needle), "template.yaml lacks {needle}");
    }
    let section = template
        .split("Variables:\n")
        .nth(1)
        .and_then(|rest| rest.split("      Policies:").next())
        .expect("an Environment.Variables section");
    let names: Vec<&str> = section
        .lines()
        .filter_map(|line| line.trim().split(':').next())
        .filter(|name| !name.is_empty())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            exposures::config::VARIABLES.contains(name),
            "template sets {name}, which the function does not read"
        );
    }
    assert!(
        !names.contains(&"CLICKHOUSE_PASSWORD") && !names.contains(&"DATABASE_URL"),
        "secrets come from Secrets Manager"
    );
}

#[test]
fn readme_documents_every_variable() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for name in exposures::config::VARIABLES {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not document {name}"
        );
    }
}
