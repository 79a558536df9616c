//! The typed spec on the wire: `Method` to and from the proto's `MethodSpec` oneof, checked
//! on the way in like a flag.

use peftrain_proto::v1 as pb;
use pb::method_spec::Method as Oneof;

use crate::method::{BitFitScope, Ia3Params, LoraParams, Method};

impl Method {
    pub fn to_proto(&self) -> pb::MethodSpec {
        let m = match self {
            Method::Full => Oneof::Full(pb::FullMethod {}),
            Method::BitFit(s) => Oneof::Bitfit(pb::BitFitMethod { bias_only: *s == BitFitScope::BiasOnly }),
            Method::Lora(p) => Oneof::Lora(pb::LoraMethod {
                r: p.r,
                alpha: p.alpha,
                dropout: p.dropout,
                target_modules: p.target_modules.clone(),
            }),
            Method::Ia3(p) => Oneof::Ia3(pb::Ia3Method {
                target_modules: p.target_modules.clone(),
                feedforward_modules: p.feedforward_modules.clone(),
            }),
        };
        pb::MethodSpec { method: Some(m) }
    }

    /// The method a wire spec names, its numbers checked as the coordinator checks its flags.
    pub fn from_proto(spec: &pb::MethodSpec) -> Result<Method, String> {
        let m = match &spec.method {
            None => return Err("run spec: no method".into()),
            Some(Oneof::Full(_)) => Method::Full,
            Some(Oneof::Bitfit(b)) => Method::BitFit(if b.bias_only { BitFitScope::BiasOnly } else { BitFitScope::All }),
            Some(Oneof::Lora(l)) => Method::Lora(LoraParams {
                r: l.r,
                alpha: l.alpha,
                dropout: l.dropout,
                target_modules: l.target_modules.clone(),
            }),
            Some(Oneof::Ia3(a)) => Method::Ia3(Ia3Params {
                target_modules: a.target_modules.clone(),
                feedforward_modules: a.feedforward_modules.clone(),
            }),
        };
        m.validate().map_err(|e| format!("run spec: {e}"))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_survives_the_wire_and_bad_numbers_do_not() {
        let lora = Method::Lora(LoraParams { r: 4, alpha: 8.0, dropout: 0.1, target_modules: vec!["query".into()] });
        for m in [Method::Full, Method::BitFit(BitFitScope::All), Method::BitFit(BitFitScope::BiasOnly), lora, Method::Ia3(Ia3Params::default())] {
            assert_eq!(Method::from_proto(&m.to_proto()), Ok(m));
        }
        assert!(Method::from_proto(&pb::MethodSpec { method: None }).is_err());
        for (r, alpha, dropout) in [(0, 16.0, 0.1), (8, f64::NAN, 0.1), (8, 16.0, 1.5), (1 << 20, 16.0, 0.0)] {
            let bad = pb::MethodSpec { method: Some(Oneof::Lora(pb::LoraMethod { r, alpha, dropout, target_modules: vec!["query".into()] })) };
            assert!(Method::from_proto(&bad).is_err(), "r {r} alpha {alpha} dropout {dropout}");
        }
    }
}
