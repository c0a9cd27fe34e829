//! The codings this build supports, as streaming encoders and decoders.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::Level;
use floodgate_core::encoding::Encoding;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};

/// The codings this build can encode and decode, in the server's default order of
/// preference: gzip first, because small gzip responses take the one-shot path.
pub(crate) const SUPPORTED: &[Encoding] = &[
    Encoding::Gzip,
    #[cfg(feature = "zstd")]
    Encoding::Zstd,
    #[cfg(feature = "br")]
    Encoding::Brotli,
    #[cfg(feature = "deflate")]
    Encoding::Deflate,
];

/// `Accept-Encoding` value listing [`SUPPORTED`], for 415 responses.
pub(crate) fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|encoding| encoding.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A streaming encoder writing into memory.
#[allow(clippy::large_enum_variant, reason = "always boxed by CompressionBody")]
pub(crate) enum Encoder {
    Gzip(async_compression::tokio::write::GzipEncoder<Vec<u8>>),
    #[cfg(feature = "deflate")]
    Deflate(async_compression::tokio::write::ZlibEncoder<Vec<u8>>),
    #[cfg(feature = "br")]
    Brotli(async_compression::tokio::write::BrotliEncoder<Vec<u8>>),
    #[cfg(feature = "zstd")]
    Zstd(async_compression::tokio::write::ZstdEncoder<Vec<u8>>),
}

/// Brotli's default quality (11) is for static files; on the fly, 4 gives most of the ratio
/// at a fraction of the time.
#[cfg(feature = "br")]
const BROTLI_QUALITY: i32 = 4;
/// zstd's own default level.
#[cfg(feature = "zstd")]
const ZSTD_LEVEL: i32 = 3;

impl Encoder {
    /// An encoder for `encoding` (one of [`SUPPORTED`]); `gzip_level` sets gzip and deflate.
    pub(crate) fn new(encoding: Encoding, gzip_level: u32) -> Option<Self> {
        let level = Level::Precise(i32::try_from(gzip_level).unwrap_or(6));
        Some(match encoding {
            Encoding::Gzip => Encoder::Gzip(
                async_compression::tokio::write::GzipEncoder::with_quality(Vec::new(), level),
            ),
            #[cfg(feature = "deflate")]
            Encoding::Deflate => Encoder::Deflate(
                async_compression::tokio::write::ZlibEncoder::with_quality(Vec::new(), level),
            ),
            #[cfg(feature = "br")]
            Encoding::Brotli => Encoder::Brotli(
                async_compression::tokio::write::BrotliEncoder::with_quality(
                    Vec::new(),
                    Level::Precise(BROTLI_QUALITY),
                ),
            ),
            #[cfg(feature = "zstd")]
            Encoding::Zstd => {
                Encoder::Zstd(async_compression::tokio::write::ZstdEncoder::with_quality(
                    Vec::new(),
                    Level::Precise(ZSTD_LEVEL),
                ))
            }
            _ => return None,
        })
    }

    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Send + Unpin)> {
        match self {
            Encoder::Gzip(encoder) => Pin::new(encoder),
            #[cfg(feature = "deflate")]
            Encoder::Deflate(encoder) => Pin::new(encoder),
            #[cfg(feature = "br")]
            Encoder::Brotli(encoder) => Pin::new(encoder),
            #[cfg(feature = "zstd")]
            Encoder::Zstd(encoder) => Pin::new(encoder),
        }
    }

    /// The bytes encoded so far, taken out.
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Encoder::Gzip(encoder) => encoder.get_mut(),
            #[cfg(feature = "deflate")]
            Encoder::Deflate(encoder) => encoder.get_mut(),
            #[cfg(feature = "br")]
            Encoder::Brotli(encoder) => encoder.get_mut(),
            #[cfg(feature = "zstd")]
            Encoder::Zstd(encoder) => encoder.get_mut(),
        })
    }

    /// Encodes all of `data`. The sink is a `Vec`, which never waits, so the encoder never
    /// returns `Pending`; if it did, that would be a bug, reported as an error.
    pub(crate) fn write_all(&mut self, cx: &mut Context<'_>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.writer().poll_write(cx, data) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => data = &data[written..],
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Err(stalled()),
            }
        }
        Ok(())
    }

    /// Flushes (a sync flush), or with `finish` ends the stream; either way everything
    /// written so far becomes output.
    pub(crate) fn flush(&mut self, cx: &mut Context<'_>, finish: bool) -> io::Result<()> {
        let polled = if finish {
            self.writer().poll_shutdown(cx)
        } else {
            self.writer().poll_flush(cx)
        };
        match polled {
            Poll::Ready(result) => result,
            Poll::Pending => Err(stalled()),
        }
    }
}

fn stalled() -> io::Error {
    io::Error::other("the encoder waited on an in-memory buffer")
}

/// A streaming decoder. Boxed: one allocation per encoded upload buys one type for every
/// coding the build supports.
pub(crate) type Decoder = Pin<Box<dyn AsyncRead + Send>>;

/// A decoder for `encoding` reading from `reader`, if this build supports it. Concatenated
/// gzip members and zstd frames are one body, as their formats define.
pub(crate) fn decoder<R: AsyncBufRead + Send + 'static>(
    encoding: Encoding,
    reader: R,
) -> Option<Decoder> {
    use async_compression::tokio::bufread;
    Some(match encoding {
        Encoding::Gzip => {
            let mut decoder = bufread::GzipDecoder::new(reader);
            decoder.multiple_members(true);
            Box::pin(decoder)
        }
        #[cfg(feature = "deflate")]
        Encoding::Deflate => Box::pin(bufread::ZlibDecoder::new(reader)),
        #[cfg(feature = "br")]
        Encoding::Brotli => Box::pin(bufread::BrotliDecoder::new(reader)),
        #[cfg(feature = "zstd")]
        Encoding::Zstd => {
            let mut decoder = bufread::ZstdDecoder::new(reader);
            decoder.multiple_members(true);
            Box::pin(decoder)
        }
        _ => return None,
    })
}
