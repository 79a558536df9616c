//! Full fine-tuning: every base parameter trains; nothing is added, nothing to merge.

use peftrain_proto::v1 as pb;

use super::MethodRules;

/// Full fine-tuning has no parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Full;

impl MethodRules for Full {
    fn trains_base(&self, _name: &str) -> bool {
        true
    }

    fn describe(&self) -> String {
        "full".into()
    }

    fn to_wire(&self) -> pb::method_spec::Method {
        pb::method_spec::Method::Full(pb::FullMethod {})
    }
}
