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

/// The template's resources, by logical id, as their indented YAML text.
fn resources(template: &str) -> Vec<(String, String)> {
    let section = template
        .split("\nResources:\n")
        .nth(1)
        .and_then(|rest| rest.split("\nOutputs:\n").next())
        .expect("a Resources section");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in section.lines() {
        let is_id = line.starts_with("  ")
            && !line.starts_with("   ")
            && line.trim_end().ends_with(':')
            && !line.trim().starts_with('#');
        if is_id {
            out.push((line.trim().trim_end_matches(':').to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn alarms_notify_on_entering_and_leaving_alarm_and_ignore_missing_data() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let all = resources(&template);
    let alarms: Vec<&(String, String)> = all
        .iter()
        .filter(|(_, body)| body.contains("Type: AWS::CloudWatch::Alarm"))
        .collect();
    assert!(
        alarms.len() >= 8,
        "{:?}",
        alarms.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    for (id, body) in &alarms {
        for needle in [
            "AlarmActions:\n        - !Ref AlarmTopic",
            "OKActions:\n        - !Ref AlarmTopic",
        ] {
            assert!(body.contains(needle), "{id} lacks {needle}");
        }
    }
    let alarm = |id: &str| {
        &alarms
            .iter()
            .find(|(name, _)| name == id)
            .unwrap_or_else(|| panic!("no alarm {id}"))
            .1
    };
    // SPEC 7b: Findings for these four codes, and the aggregate RefreshFailed.
    for (id, code) in [
        ("FindingSrmAlarm", "srm"),
        ("FindingNoExposuresAlarm", "no_exposures"),
        ("FindingRefreshFailingAlarm", "refresh_failing"),
        ("FindingStaleAlarm", "stale"),
    ] {
        let body = alarm(id);
        assert!(body.contains("MetricName: Findings"), "{id}");
        assert!(
            body.contains(&format!("- Name: Finding\n          Value: {code}\n")),
            "{id}"
        );
        assert!(body.contains("Namespace: !Ref MetricsNamespace"), "{id}");
        assert!(body.contains("TreatMissingData: ignore"), "{id}");
    }
    let refresh_failed = alarm("RefreshFailedAlarm");
    assert!(refresh_failed.contains("MetricName: RefreshFailed"));
    assert!(
        !refresh_failed.contains("Dimensions:"),
        "RefreshFailed is alarmed on the aggregate, without ExperimentId"
    );
    assert!(refresh_failed.contains("TreatMissingData: ignore"));
    // The metrics lines (JSON without "level") are INFO to Lambda's log-level
    // filter: a higher ApplicationLogLevel would drop them.
    let level = template
        .split("ApplicationLogLevel: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an ApplicationLogLevel");
    assert!(["TRACE", "DEBUG", "INFO"].contains(&level), "{level}");
    assert!(template.contains("Type: AWS::CloudWatch::Dashboard"));
}
