//! The experiment's intended split, read from `variant_weights`.

use std::collections::BTreeMap;

use serde_json::Value;

/// The experiment's intended split: variant key to a non-negative weight, on any scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights(BTreeMap<String, f64>);

impl Weights {
    /// Reads a `variant_weights` value: `Ok(None)` when it is null or absent,
    /// an error naming what is wrong when it is not an object of non-negative numbers.
    pub fn from_json(value: Option<&Value>) -> Result<Option<Self>, String> {
        let object = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(object)) => object,
            Some(other) => return Err(format!("not a JSON object: {other}")),
        };
        let mut weights = BTreeMap::new();
        for (variant, weight) in object {
            match weight.as_f64() {
                Some(w) if w >= 0.0 && w.is_finite() => {
                    weights.insert(variant.clone(), w);
                }
                _ => {
                    return Err(format!(
                        "weight of {variant:?} is not a non-negative number: {weight}"
                    ))
                }
            }
        }
        Ok(Some(Self(weights)))
    }

    /// The arms: variants with a positive weight. Weights whose sum would
    /// overflow are divided by the largest first (the scale does not matter).
    pub(super) fn arms(&self) -> BTreeMap<&str, f64> {
        let arms: BTreeMap<&str, f64> = self
            .0
            .iter()
            .filter(|(_, w)| **w > 0.0)
            .map(|(v, w)| (v.as_str(), *w))
            .collect();
        if arms.values().sum::<f64>().is_finite() {
            return arms;
        }
        let largest = arms.values().fold(0.0_f64, |m, w| m.max(*w));
        arms.into_iter().map(|(v, w)| (v, w / largest)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn malformed_weights_are_errors_naming_the_problem() {
        for bad in [
            json!([1, 2]),
            json!("50/50"),
            json!(5),
            json!(true),
            json!({"control": -1, "b": 1}),
            json!({"control": "50", "b": 50}),
            json!({"control": null, "b": 50}),
            json!({"control": {"w": 1}}),
        ] {
            let e = Weights::from_json(Some(&bad)).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert_eq!(Weights::from_json(None), Ok(None));
        assert_eq!(Weights::from_json(Some(&Value::Null)), Ok(None));
        assert!(
            Weights::from_json(Some(&json!({"control": 1e300, "b": 0.5})))
                .unwrap()
                .is_some()
        );
    }
}
