//! The hot-update doctor's alerts ([F11]) behave as their promtool unit
//! tests say: deploy/prometheus/tests/doctor.test.yml.

use crate::common::{promtool, repo};

#[test]
fn doctor_alert_rules_pass_their_unit_tests() {
    let tests = repo("deploy/prometheus/tests/doctor.test.yml");
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}
