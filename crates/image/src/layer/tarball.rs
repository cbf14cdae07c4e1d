//! Encoding of tar headers the way rbuild writes layers: POSIX ustar headers,
//! with a PAX extended header before any entry whose name, link name, size,
//! ids or mtime do not fit ustar, or that carries xattrs. Every field has a
//! fixed rule (empty uname/gname, perm bits only in mode, PAX records sorted
//! by key), so the same entries always give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// Largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL_11: u64 = 0o777_7777_7777;
/// Largest value of a 7-digit octal field (uid, gid, devmajor, devminor).
const MAX_OCTAL_7: u64 = 0o777_7777;

/// One tar header to encode.
pub(crate) struct Header<'a> {
    /// Full entry name (directories end in `/`).
    pub name: &'a str,
    /// ustar type flag (`b'0'`, `b'5'`, ...).
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub linkname: &'a str,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: &'a BTreeMap<String, Vec<u8>>,
}

/// Writes the header (preceded by a PAX header when needed).
pub(crate) fn write_header(w: &mut dyn Write, h: &Header<'_>) -> io::Result<()> {
    let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if h.name.len() > 100 || !h.name.is_ascii() {
        pax.insert("path".into(), h.name.as_bytes().to_vec());
    }
    if h.linkname.len() > 100 || !h.linkname.is_ascii() {
        pax.insert("linkpath".into(), h.linkname.as_bytes().to_vec());
    }
    if h.size > MAX_OCTAL_11 {
        pax.insert("size".into(), h.size.to_string().into_bytes());
    }
    if u64::from(h.uid) > MAX_OCTAL_7 {
        pax.insert("uid".into(), h.uid.to_string().into_bytes());
    }
    if u64::from(h.gid) > MAX_OCTAL_7 {
        pax.insert("gid".into(), h.gid.to_string().into_bytes());
    }
    if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL_11 {
        pax.insert("mtime".into(), h.mtime.to_string().into_bytes());
    }
    for (k, v) in h.xattrs {
        pax.insert(format!("SCHILY.xattr.{k}"), v.clone());
    }
    if !pax.is_empty() {
        let mut data = Vec::new();
        for (k, v) in &pax {
            pax_record(&mut data, k, v);
        }
        // Named like Go's archive/tar names them: DIR/PaxHeaders.0/BASE.
        let trimmed = h.name.trim_end_matches('/');
        let (dir, base) = match trimmed.rfind('/') {
            Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
            None => ("", trimmed),
        };
        let pax_name = format!("{dir}PaxHeaders.0/{base}");
        let empty = BTreeMap::new();
        let block = ustar_block(&Header {
            name: &pax_name,
            typeflag: b'x',
            mode: 0,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime: 0,
            linkname: "",
            devmajor: 0,
            devminor: 0,
            xattrs: &empty,
        });
        w.write_all(&block)?;
        w.write_all(&data)?;
        write_padding(w, data.len() as u64)?;
    }
    w.write_all(&ustar_block(h))
}

/// Zero bytes that pad `size` bytes of content to a whole block.
pub(crate) fn write_padding(w: &mut dyn Write, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// The end-of-archive marker: two zero blocks.
pub(crate) fn write_trailer(w: &mut dyn Write) -> io::Result<()> {
    w.write_all(&[0u8; 2 * BLOCK])
}

/// `"<len> <key>=<value>\n"`, where len counts the whole record, its own
/// digits included (POSIX pax, "extended header" format).
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The 512-byte ustar header; fields that do not fit hold a truncated or
/// zero value and the PAX header written before it carries the real one.
fn ustar_block(h: &Header<'_>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    put_str(&mut b[0..100], h.name);
    put_octal(&mut b[100..108], u64::from(h.mode & 0o7777));
    put_octal(&mut b[108..116], clamp(u64::from(h.uid), MAX_OCTAL_7));
    put_octal(&mut b[116..124], clamp(u64::from(h.gid), MAX_OCTAL_7));
    put_octal(&mut b[124..136], clamp(h.size, MAX_OCTAL_11));
    let mtime = if h.mtime < 0 {
        0
    } else {
        clamp(h.mtime as u64, MAX_OCTAL_11)
    };
    put_octal(&mut b[136..148], mtime);
    b[156] = h.typeflag;
    put_str(&mut b[157..257], h.linkname);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    if matches!(h.typeflag, b'3' | b'4') {
        put_octal(&mut b[329..337], clamp(u64::from(h.devmajor), MAX_OCTAL_7));
        put_octal(&mut b[337..345], clamp(u64::from(h.devminor), MAX_OCTAL_7));
    }
    // Checksum: sum of all bytes with the checksum field read as spaces.
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let digits = format!("{sum:06o}");
    b[148..154].copy_from_slice(digits.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    b
}

/// A value too large for its field is written as 0; PAX holds the real one
/// (only size/uid/gid/mtime can overflow, all of which get PAX records).
fn clamp(v: u64, max: u64) -> u64 {
    if v > max {
        0
    } else {
        v
    }
}

/// Zero-padded octal digits followed by a NUL, filling the field.
fn put_octal(field: &mut [u8], v: u64) {
    let digits = format!("{:0width$o}", v, width = field.len() - 1);
    let last = field.len() - 1;
    field[..last].copy_from_slice(digits.as_bytes());
    field[last] = 0;
}

/// As many bytes of `s` as fit, cut on a character boundary.
fn put_str(field: &mut [u8], s: &str) {
    let mut end = s.len().min(field.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&s.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", b"abc");
        assert_eq!(out, b"12 path=abc\n");
        // 98 bytes + 2 digits would be 100, which needs 3 digits: 101.
        let mut out = Vec::new();
        let v = vec![b'x'; 91];
        pax_record(&mut out, "path", &v);
        assert_eq!(out.len(), 101);
        assert!(out.starts_with(b"101 path="));
    }

    #[test]
    fn octal_fields_are_zero_padded_and_nul_terminated() {
        let mut f = [0xffu8; 8];
        put_octal(&mut f, 0o755);
        assert_eq!(&f, b"0000755\0");
    }
}
