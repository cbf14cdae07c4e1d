//! Layer compression and decompression: the [`Compression`] choices with
//! their OCI media types, a parallel gzip encoder, and readers that undo any
//! of the formats rbuild meets (layers and `ADD` archives).
//!
//! The parallel gzip encoder cuts the stream into fixed-size blocks and
//! deflates them on a dedicated thread pool, pigz-style: every block but the
//! last ends with a sync flush (so blocks concatenate into one deflate
//! stream), each block is primed with the last 32 KiB of the previous one (so
//! the ratio matches a serial encoder), and the CRC-32s of the blocks are
//! combined in order. The output is one ordinary gzip member with a fixed
//! header (mtime 0, no name), and it depends only on the input and the level,
//! never on the number of threads. Layout, manifests and digests live
//! elsewhere; this module only turns bytes into bytes.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::sync::OnceLock;

use flate2::{Compress, FlushCompress, Status};
use serde::{Deserialize, Serialize};

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip-compressed layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Compression {
    /// gzip (the default, readable by every registry and runtime), level 0-9.
    Gzip {
        /// Deflate level, 0 (store) to 9 (best).
        level: u32,
    },
    /// zstd, level 1-22 (negative levels are zstd's "fast" levels).
    Zstd {
        /// zstd compression level.
        level: i32,
    },
    /// No compression: the blob is the tar itself and its digest the diffID.
    None,
}

impl Default for Compression {
    /// gzip at level 6, the level of `gzip`, `pigz` and Go's default writer.
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

impl Compression {
    /// The OCI media type of a layer blob compressed this way.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd { .. } => MEDIA_TYPE_TAR_ZSTD,
            Compression::None => MEDIA_TYPE_TAR,
        }
    }
}

/// A stream format, as told by a media type or detected from magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Not compressed.
    Plain,
    /// gzip, possibly several members.
    Gzip,
    /// zstd, possibly several frames.
    Zstd,
    /// bzip2 (only `ADD` archives).
    Bzip2,
    /// xz (only `ADD` archives).
    Xz,
}

impl Format {
    /// The format of a layer blob of this media type (OCI and Docker names,
    /// including the non-distributable variants), or `None` if unknown.
    pub fn from_media_type(media_type: &str) -> Option<Format> {
        let base = media_type
            .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
            .or_else(|| media_type.strip_prefix("application/vnd.oci.image.layer.v1."))
            .or_else(|| {
                media_type.strip_prefix("application/vnd.docker.image.rootfs.foreign.diff.")
            })
            .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs.diff."))?;
        match base {
            "tar" => Some(Format::Plain),
            "tar+gzip" | "tar.gzip" => Some(Format::Gzip),
            "tar+zstd" | "tar.zstd" => Some(Format::Zstd),
            _ => None,
        }
    }

    /// Detects the format from the first bytes of a stream; anything
    /// unrecognised is [`Format::Plain`].
    pub fn detect(head: &[u8]) -> Format {
        if head.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if head.starts_with(b"BZh") {
            Format::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else {
            Format::Plain
        }
    }
}

/// Wraps `reader` in the decoder for `format`. gzip members and zstd frames
/// are read to the end of the stream, not just the first one.
pub fn decoder<'a, R: BufRead + Send + 'a>(
    format: Format,
    reader: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match format {
        Format::Plain => Box::new(reader),
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(reader)),
        Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(reader)),
    })
}

/// Peeks at the start of `reader` and returns the detected format; nothing
/// is consumed.
pub fn sniff<R: Read>(reader: &mut BufReader<R>) -> io::Result<Format> {
    // fill_buf may return fewer bytes than the magic on a short first read;
    // the magic numbers are at most 6 bytes and BufReader's buffer is larger.
    let head = reader.fill_buf()?;
    Ok(Format::detect(head))
}

/// A compressing writer for one of the [`Compression`] formats.
pub(crate) enum Encoder<W: Write> {
    Gzip(ParGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    /// A new encoder writing into `inner`; fails on an out-of-range level.
    pub(crate) fn new(compression: Compression, inner: W) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::Gzip { level } => {
                if level > 9 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("gzip level {level} is out of range 0-9"),
                    ));
                }
                Encoder::Gzip(ParGzEncoder::new(inner, level))
            }
            Compression::Zstd { level } => {
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "zstd level {level} is out of range {}-{}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                let mut enc = zstd::stream::write::Encoder::new(inner, level)?;
                // zstd's multithreaded output does not depend on the number
                // of workers (as long as there is at least one), so layers
                // stay reproducible across machines.
                enc.multithread(worker_count() as u32)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
            Compression::None => Encoder::Plain(inner),
        })
    }

    /// Writes the end of the stream and returns the inner writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::Plain(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

/// Threads used for compression: every core.
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The pool that runs gzip block jobs. It is separate from rayon's global
/// pool on purpose: a caller running on the global pool (parallel stages)
/// blocks waiting for its blocks, and must not wait for jobs queued behind
/// itself.
fn gzip_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(worker_count())
            .thread_name(|i| format!("rbuild-gzip-{i}"))
            .build()
            .or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
            .expect("a one-thread pool can always be built")
    })
}

/// Input bytes per gzip block. Large enough that the per-block cost (a
/// fresh deflate state, a 5-byte sync marker) is noise, small enough to keep
/// the in-flight memory to a few MiB.
const GZIP_BLOCK: usize = 256 * 1024;
/// Deflate's window: a block is primed with this much of the previous one.
const DICT_SIZE: usize = 32 * 1024;

struct CompressedBlock {
    data: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A gzip encoder that deflates blocks in parallel and writes one gzip
/// member, byte-identical whatever the thread count.
pub(crate) struct ParGzEncoder<W: Write> {
    inner: W,
    level: u32,
    buf: Vec<u8>,
    /// The tail of the previous block, the dictionary of the next one.
    dict: Vec<u8>,
    pending: VecDeque<mpsc::Receiver<io::Result<CompressedBlock>>>,
    max_pending: usize,
    crc: crc32fast::Hasher,
    total: u64,
    header_written: bool,
}

impl<W: Write> ParGzEncoder<W> {
    pub(crate) fn new(inner: W, level: u32) -> ParGzEncoder<W> {
        ParGzEncoder {
            inner,
            level,
            buf: Vec::with_capacity(GZIP_BLOCK),
            dict: Vec::new(),
            pending: VecDeque::new(),
            max_pending: 2 * worker_count() + 1,
            crc: crc32fast::Hasher::new(),
            total: 0,
            header_written: false,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // ID1 ID2 CM=deflate FLG=0, MTIME=0, XFL=0, OS=255 (unknown):
            // nothing about the host or the time ends up in the digest.
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Hands the buffered block to the pool.
    fn submit(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_BLOCK));
        let dict = std::mem::take(&mut self.dict);
        self.dict = block[block.len().saturating_sub(DICT_SIZE)..].to_vec();
        self.total += block.len() as u64;
        let level = self.level;
        let (tx, rx) = mpsc::sync_channel(1);
        gzip_pool().spawn(move || {
            // The receiver only disappears when the encoder was dropped
            // midway; the result is then unwanted.
            let _ = tx.send(deflate_block(&block, &dict, level));
        });
        self.pending.push_back(rx);
        while self.pending.len() >= self.max_pending {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let block = rx
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread died"))??;
        self.write_header()?;
        self.inner.write_all(&block.data)?;
        self.crc.combine(&block.crc);
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.write_header()?;
        // Every block ended with a sync flush, so the stream is byte aligned:
        // close it with an empty final fixed-Huffman block (BFINAL=1,
        // BTYPE=01, end-of-block code), as pigz does.
        self.inner.write_all(&[0x03, 0x00])?;
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        // ISIZE is the input length modulo 2^32 (RFC 1952 section 2.3.1).
        self.inner.write_all(&(self.total as u32).to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = GZIP_BLOCK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == GZIP_BLOCK {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing mid-stream would change the output with the caller's
        // write pattern; only completed blocks are written.
        self.inner.flush()
    }
}

/// Bytes per piece of a block that is judged noise or data on its own:
/// small enough to tell a tar header apart from the random file data
/// around it.
const PIECE: usize = 1024;
/// Order-0 entropy, in bits per byte, from which a piece counts as noise.
/// Random 1 KiB pieces measure about 7.8 (an estimate from 1024 bytes
/// falls a little short of 8), text 4 to 5, machine code about 6.
const NOISE_BITS: f32 = 7.5;

/// Deflates one block as a raw deflate fragment ending in a sync flush.
///
/// Noise (random, encrypted or already compressed bytes) is written as
/// stored deflate blocks: a match search would find nothing in it and is
/// most of the cost of compressing such data. The runs of data between
/// noise are deflated at `level`; only a block's first run is primed with
/// the previous block's tail, as a later one follows noise. The choices
/// depend on the block alone, so output stays a function of the input and
/// the level.
fn deflate_block(block: &[u8], dict: &[u8], level: u32) -> io::Result<CompressedBlock> {
    let noise: Vec<bool> = block
        .chunks(PIECE)
        .map(|piece| level > 0 && is_noise(piece))
        .collect();
    let mut out = Vec::with_capacity(block.len() / 2 + 1024);
    let mut compress: Option<Compress> = None;
    let mut first = 0;
    while first < noise.len() {
        let end = first
            + noise[first..]
                .iter()
                .take_while(|&&n| n == noise[first])
                .count();
        let run = &block[first * PIECE..(end * PIECE).min(block.len())];
        if noise[first] {
            store(run, &mut out);
        } else {
            let c = match &mut compress {
                Some(c) => {
                    c.reset();
                    c
                }
                None => compress.insert(Compress::new(flate2::Compression::new(level), false)),
            };
            if first == 0 && !dict.is_empty() {
                c.set_dictionary(dict).map_err(io::Error::other)?;
            }
            deflate_run(c, run, &mut out)?;
        }
        first = end;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(block);
    Ok(CompressedBlock { data: out, crc })
}

/// Deflates `data`, ending in a sync flush (byte aligned, not final).
fn deflate_run(c: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut consumed = 0usize;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let before = c.total_in();
        let status = c
            .compress_vec(&data[consumed..], out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        consumed += (c.total_in() - before) as usize;
        // The flush is complete once all input is taken and zlib left spare
        // room in the output (a full buffer may hide more pending output).
        if consumed == data.len() && out.len() < out.capacity() {
            return Ok(());
        }
        if status == Status::StreamEnd {
            return Ok(());
        }
    }
}

/// Appends `data` as stored (uncompressed) deflate blocks. The stream is
/// byte aligned before and after: every run before ends in a sync flush.
fn store(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(usize::from(u16::MAX)) {
        let len = chunk.len() as u16;
        // BFINAL=0, BTYPE=00, then padding to the byte boundary.
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Whether a piece looks like noise: its order-0 entropy reaches
/// [`NOISE_BITS`].
fn is_noise(piece: &[u8]) -> bool {
    // c * log2(c) for every count a piece can hold.
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=PIECE)
            .map(|c| {
                if c == 0 {
                    0.0
                } else {
                    c as f32 * (c as f32).log2()
                }
            })
            .collect()
    });
    // Four tables, so consecutive increments do not wait on each other.
    let mut counts = [[0u16; 256]; 4];
    let mut quads = piece.chunks_exact(4);
    for q in &mut quads {
        for (table, &b) in counts.iter_mut().zip(q) {
            table[usize::from(b)] += 1;
        }
    }
    for &b in quads.remainder() {
        counts[0][usize::from(b)] += 1;
    }
    let n = piece.len() as f32;
    let sum: f32 = (0..256)
        .map(|i| table[usize::from(counts[0][i] + counts[1][i] + counts[2][i] + counts[3][i])])
        .sum();
    // H = log2(n) - sum(c * log2(c)) / n
    n.log2() - sum / n >= NOISE_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn inflate(gz_data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz_data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn noise_is_stored_and_the_data_around_it_compressed() {
        let random = noise(1 << 20, 0x9e37_79b9_7f4a_7c15);
        assert!(random.chunks(PIECE).all(is_noise));
        let text: Vec<u8> = (0..1 << 20).map(|i| b"hello layer "[i % 12]).collect();
        assert!(!text.chunks(PIECE).any(is_noise));
        // Stored: 5 bytes of block header per 64 KiB, plus sync markers.
        let out = gz(&random, 6, 1 << 20);
        assert!(
            out.len() < random.len() + random.len() / 1000,
            "{}",
            out.len()
        );
        assert_eq!(inflate(&out), random);
        assert!(gz(&text, 6, 1 << 20).len() < text.len() / 10);
        // A tar of random files: the zeros of each 512-byte header and of
        // the padding still shrink between the stored file data.
        let mut tar_like = Vec::new();
        for i in 0..100u64 {
            tar_like.extend_from_slice(&[0u8; 1024]);
            tar_like.extend_from_slice(&noise(9000, i + 1));
        }
        assert!(tar_like.chunks(PIECE).any(is_noise));
        let out = gz(&tar_like, 6, 1 << 20);
        assert!(out.len() < tar_like.len() - 90 * 1024, "{}", out.len());
        assert_eq!(inflate(&out), tar_like);
        // Level 0 stores everything through zlib, noise or not.
        assert_eq!(inflate(&gz(&tar_like, 0, 1 << 20)), tar_like);
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half compressible text, half noise.
                if (i / 4096) % 2 == 0 {
                    b"the quick brown fox "[i % 20]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn gz(data: &[u8], level: u32, chunk: usize) -> Vec<u8> {
        let mut e = ParGzEncoder::new(Vec::new(), level);
        for c in data.chunks(chunk.max(1)) {
            e.write_all(c).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn parallel_gzip_round_trips_and_is_deterministic() {
        for len in [0, 1, GZIP_BLOCK - 1, GZIP_BLOCK, 3 * GZIP_BLOCK + 17] {
            let data = pseudo_random(len, len as u64 + 1);
            let a = gz(&data, 6, 4096);
            let b = gz(&data, 6, 1_000_003);
            assert_eq!(a, b, "output depends on the write pattern (len {len})");
            assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&a[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn dictionary_keeps_the_ratio_of_a_serial_encoder() {
        // Words picked at random: every block finds matches in the one
        // before, and no piece is noise.
        let words: [&[u8]; 6] = [b"layer ", b"image ", b"build ", b"cache ", b"step ", b"\n"];
        let picks = noise(4 * GZIP_BLOCK / 5, 7);
        let data: Vec<u8> = picks
            .iter()
            .flat_map(|&p| words[usize::from(p) % words.len()].iter().copied())
            .collect();
        let par = gz(&data, 6, 65536);
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        serial.write_all(&data).unwrap();
        let serial = serial.finish().unwrap();
        // A few bytes of sync markers per block, nothing more.
        assert!(
            par.len() <= serial.len() + 64,
            "{} vs {}",
            par.len(),
            serial.len()
        );
    }

    #[test]
    fn rejects_bad_levels() {
        assert!(Encoder::new(Compression::Gzip { level: 10 }, Vec::new()).is_err());
        assert!(Encoder::new(Compression::Zstd { level: 99 }, Vec::new()).is_err());
    }

    #[test]
    fn media_types_map_back_to_formats() {
        for (c, f) in [
            (Compression::Gzip { level: 1 }, Format::Gzip),
            (Compression::Zstd { level: 3 }, Format::Zstd),
            (Compression::None, Format::Plain),
        ] {
            assert_eq!(Format::from_media_type(c.media_type()), Some(f));
        }
        assert_eq!(
            Format::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Format::Gzip)
        );
        assert_eq!(Format::from_media_type("application/json"), None);
    }

    #[test]
    fn detects_magic_bytes() {
        assert_eq!(Format::detect(&[0x1f, 0x8b, 8]), Format::Gzip);
        assert_eq!(Format::detect(b"BZh91AY"), Format::Bzip2);
        assert_eq!(Format::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
        assert_eq!(
            Format::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Format::Xz
        );
        assert_eq!(Format::detect(b"hello"), Format::Plain);
    }
}
