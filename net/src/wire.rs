//! fp32 values as the wire carries them (little-endian bytes in a `bytes` field), converted with
//! one copy each way instead of a loop over values.

/// `values` as little-endian bytes.
pub fn f32_to_le_bytes(values: &[f32]) -> Vec<u8> {
    #[cfg(target_endian = "little")]
    {
        bytemuck::cast_slice::<f32, u8>(values).to_vec()
    }
    #[cfg(not(target_endian = "little"))]
    {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Little-endian bytes as fp32 values (a trailing partial value is ignored; callers check
/// lengths first).
pub fn le_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / 4;
    #[cfg(target_endian = "little")]
    {
        // One copy whatever the bytes' alignment (a protobuf field's need not be 4-aligned).
        bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..n * 4])
    }
    #[cfg(not(target_endian = "little"))]
    {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

/// Adds little-endian fp32 `bytes` element-wise into `dst` (the reduce half of a ring round).
pub fn add_le_bytes(dst: &mut [f32], bytes: &[u8]) {
    for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
        *d += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Overwrites `dst` with little-endian fp32 `bytes` (the gather half of a ring round).
pub fn copy_le_bytes(dst: &mut [f32], bytes: &[u8]) {
    let v = le_bytes_to_f32(bytes);
    let n = v.len().min(dst.len());
    dst[..n].copy_from_slice(&v[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reduce() {
        let v = [1.5f32, -2.0, f32::MIN_POSITIVE, 3.25e10];
        let b = f32_to_le_bytes(&v);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..4], &1.5f32.to_le_bytes());
        assert_eq!(le_bytes_to_f32(&b), v);
        let mut d = [1.0f32; 4];
        add_le_bytes(&mut d, &b);
        assert_eq!(d, [2.5, -1.0, 1.0 + f32::MIN_POSITIVE, 3.25e10 + 1.0]);
        copy_le_bytes(&mut d, &b);
        assert_eq!(d, v);
    }
}
