//! LoRA (Hu et al., 2021) as peft implements it: `y = W x + b + B(A(dropout(x))) * alpha / r`
//! on the target Linear modules, A Kaiming-uniform and B zero at the start, the head trained as
//! peft's `modules_to_save`. Its parameters are `peftrain_spec::LoraParams`.

use super::HEAD_PREFIX;

/// Base parameters LoRA trains: the head only.
pub fn trains_base(name: &str) -> bool {
    name.starts_with(HEAD_PREFIX)
}
