//! The deployment is checked with the suite: every kustomize overlay renders with kubectl and
//! validates against the Kubernetes schemas (tests/deploy/check.sh; the image build runs where
//! Docker is available and is skipped with a printed reason where it is not).

use peftrain_tests::root;

#[test]
fn manifests_render_and_validate() {
    let out = std::process::Command::new(root().join("tests/deploy/check.sh")).output().expect("run tests/deploy/check.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "tests/deploy/check.sh failed:\n{text}");
}
