//! The peftrain wire protocol: code generated from `proto/peftrain/v1/peftrain.proto`, and
//! TensorBoard's event records from `proto/tensorflow/event.proto`; nothing else.

/// Version 1 of the protocol (the package `peftrain.v1`).
pub mod v1 {
    tonic::include_proto!("peftrain.v1");

    /// Minor protocol version a coordinator and its workers must share.
    pub const PROTOCOL_VERSION: u32 = 6;
}

/// TensorBoard's event-file messages (TensorFlow's package `tensorflow`, scalars only).
pub mod tensorflow {
    tonic::include_proto!("tensorflow");
}
