//! Tensor operations below the model and the methods: dtype casts without copies and the
//! seeded dropout both the encoders and the adapters draw from.

pub mod dropout;

use tch::{Kind, Tensor};

/// `t` in `kind`, without a copy when it already is.
pub fn as_kind(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}
