//! One-shot gzip: a whole body in one call, with the compressor's state reused per thread.
//!
//! A fresh deflate state is a few hundred KiB of tables to allocate and clear; for a 1 KiB
//! response that costs more than the compression. Each thread keeps one state and resets
//! it between bodies, holding it only for the synchronous call (never across an `.await`).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The gzip member header (RFC 1952 §2.3): magic, deflate, no flags, no mtime, no extra
/// flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    static STATE: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// `input` as one gzip member at `level` (0–9).
///
/// # Errors
///
/// The compressor's error; then the thread's state is dropped, and the next call starts a
/// fresh one.
pub(crate) fn compress(input: &[u8], level: u32) -> Result<Bytes, flate2::CompressError> {
    STATE.with_borrow_mut(|state| {
        let compress = match state {
            Some((kept, compress)) if *kept == level => {
                compress.reset();
                compress
            }
            _ => {
                &mut state
                    .insert((level, Compress::new(Compression::new(level), false)))
                    .1
            }
        };
        // Deflate's worst case is a few bytes per 16 KiB block over the input.
        let mut output = Vec::with_capacity(HEADER.len() + input.len() + input.len() / 1000 + 64);
        output.extend_from_slice(&HEADER);
        let start_in = compress.total_in();
        loop {
            let consumed = usize::try_from(compress.total_in() - start_in).unwrap_or(input.len());
            let status = compress.compress_vec(
                &input[consumed.min(input.len())..],
                &mut output,
                FlushCompress::Finish,
            );
            let status = match status {
                Ok(status) => status,
                Err(error) => {
                    *state = None;
                    return Err(error);
                }
            };
            if status == Status::StreamEnd {
                break;
            }
            output.reserve(output.capacity().max(64));
        }
        let mut crc = Crc::new();
        crc.update(input);
        output.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the input length modulo 2^32 (RFC 1952 §2.3.1).
        output.extend_from_slice(&(crc.amount()).to_le_bytes());
        // The buffer was sized for the input; keep only what the response needs.
        if output.capacity() > 2 * output.len() {
            output.shrink_to_fit();
        }
        Ok(Bytes::from(output))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn round_trips_at_every_level_and_size() {
        let json: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\"}},").into_bytes())
            .collect();
        for level in 0..=9 {
            for size in [0, 1, 100, 1024, 16 * 1024, json.len()] {
                let input = &json[..size];
                assert_eq!(
                    gunzip(&compress(input, level).expect("compresses")),
                    input,
                    "level {level}, {size} bytes"
                );
            }
        }
    }

    #[test]
    fn incompressible_input_still_round_trips() {
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(gunzip(&compress(&noise, 6).expect("compresses")), noise);
    }
}
