//! BitFit (Ben Zaken et al., 2022): the biases (and head) train where they are
//! (`peftrain_spec::method::bitfit` says which); no tensor is added, nothing to merge.

use super::{BitFitScope, Peft};

impl Peft for BitFitScope {}
