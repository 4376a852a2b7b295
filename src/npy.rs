//! A small, strict reader and writer for NumPy `.npy` files holding little-endian `float32`
//! arrays in C order.
//!
//! The reader accepts format versions 1.0, 2.0 and 3.0 and refuses everything it does not
//! fully understand: other dtypes, Fortran-order data, malformed headers, truncated files and
//! trailing bytes. It never panics on any input and never allocates more than the size of the
//! input it was given: the element count declared by the header is checked against the bytes
//! actually present before anything of that size is allocated (from a stream, which tells no
//! size, it allocates no more than twice the data that came, or 16 MiB, and never past the
//! declared size). An allocation the host refuses is an error, not an abort.
//!
//! The writer always produces a version 1.0 file (`'<f4'`, `fortran_order: False`, C-order
//! data) whose data starts at a multiple of 64 bytes, exactly like `numpy.save`.

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{BnError, Result};

/// The six bytes every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Data starts at a multiple of this many bytes (what `numpy.save` does).
const ALIGN: usize = 64;

/// The only dtype we read or write.
const DESCR: &str = "<f4";

/// Size in bytes of one element.
const ELEM: usize = std::mem::size_of::<f32>();

/// The path used in error messages when parsing from memory with no file behind it.
pub const BYTES_PATH: &str = "<bytes>";

fn npy_err(path: &str, reason: impl Into<String>) -> BnError {
    BnError::Npy {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// The longest header taken from a stream, whose length no file size bounds: numpy's own
/// reader takes 10,000 bytes by default, and a float32 array's header holds only its shape.
const MAX_STREAM_HEADER: usize = 1 << 20;

/// Reads a float32 `.npy` file.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    let shown = path.display().to_string();
    let io = |source| BnError::Io {
        path: shown.clone(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    // A regular file's length; a pipe or a device tells nothing before its end.
    let length = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    // Piece by piece, each checked before the next is read: the magic string and version
    // (a device such as /dev/zero has no end), the header (a float64 file of 40 GB is
    // refused for its dtype, not read), then the data, whose size a regular file's length
    // tells before any of it is read, and which a stream gives no more of than the header
    // declares and one byte to tell that it goes on.
    let mut bytes = Vec::new();
    let mut read = |bytes: &mut Vec<u8>, n: usize| {
        (&mut file)
            .take(n as u64)
            .read_to_end(bytes)
            .map_err(io)
            .map(|_| ())
    };
    read(&mut bytes, PREAMBLE)?;
    let width = header_length_width(&bytes, &shown)?;
    read(&mut bytes, width)?;
    let header_len = match bytes.get(PREAMBLE..PREAMBLE + width) {
        Some(len_bytes) => header_length(len_bytes, &shown)?,
        // Too short: parse_prefix says where the file ends.
        None => 0,
    };
    if length.is_none() && header_len > MAX_STREAM_HEADER {
        return Err(npy_err(
            &shown,
            format!(
                "header length {header_len} is over the {MAX_STREAM_HEADER} bytes read from \
                 a stream"
            ),
        ));
    }
    read(&mut bytes, header_len)?;
    let prefix = parse_prefix(&bytes, &shown)?;
    if let Some(length) = length {
        let held =
            usize::try_from(length.saturating_sub(prefix.header_end as u64)).unwrap_or(usize::MAX);
        check_data_len(held, &prefix, &shown)?;
    }
    // Straight into the values, so that the file is held once, not as bytes and again as
    // values: a regular file's all at once (its length is checked), a stream's a step at a
    // time, so that a header declaring more than comes is not taken at its word.
    let step = match length {
        Some(_) => prefix.count,
        None => STREAM_STEP / ELEM,
    };
    let mut values: Vec<f32> = Vec::new();
    let mut held = 0;
    while values.len() < prefix.count {
        let start = values.len();
        let n = step.min(prefix.count - start);
        // Doubling, so that a stream's steps do not copy what came before each time, but
        // never past the declared count.
        let room = (2 * values.capacity()).max(start + n).min(prefix.count);
        values.try_reserve_exact(room - start).map_err(|_| {
            npy_err(
                &shown,
                format!("cannot allocate {} bytes for its values", room * ELEM),
            )
        })?;
        values.resize(start + n, 0.0);
        let got =
            read_full(&mut file, bytemuck::cast_slice_mut(&mut values[start..])).map_err(io)?;
        held += got;
        if got < n * ELEM {
            // Truncated (a stream, or a file cut while it was read).
            check_data_len(held, &prefix, &shown)?;
        }
    }
    if length.is_none() && read_full(&mut file, &mut [0u8]).map_err(io)? > 0 {
        return Err(npy_err(
            &shown,
            format!(
                "trailing bytes: header declares {} elements ({} bytes) but the stream goes \
                 on past them",
                prefix.count, prefix.data_len
            ),
        ));
    }
    // The bytes as read are little-endian: on a big-endian host, turned around.
    for v in &mut values {
        *v = f32::from_le_bytes(v.to_ne_bytes());
    }
    let shape = prefix.shape;
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| {
        npy_err(
            &shown,
            format!("shape {shape:?} cannot be represented: {e}"),
        )
    })
}

/// How much of a stream's data is taken at a time (see read_f32).
const STREAM_STEP: usize = 16 << 20;

/// Fills `buf` from `file` as far as it goes; the bytes read, fewer only at its end.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Where an .npy file's data starts, and what it must hold, from its preamble and header.
struct Prefix {
    header_end: usize,
    shape: Vec<usize>,
    count: usize,
    data_len: usize,
}

/// The header length that follows the preamble: 2 bytes (version 1.0) or 4.
fn header_length(len_bytes: &[u8], path: &str) -> Result<usize> {
    match *len_bytes {
        [a, b] => Ok(u16::from_le_bytes([a, b]) as usize),
        [a, b, c, d] => {
            let n = u32::from_le_bytes([a, b, c, d]);
            usize::try_from(n).map_err(|_| {
                npy_err(
                    path,
                    format!("header length {n} does not fit in memory on this machine"),
                )
            })
        }
        _ => Err(npy_err(path, "internal error: bad header length width")),
    }
}

/// The magic string and the format version.
const PREAMBLE: usize = MAGIC.len() + 2;

/// Checks the preamble of `bytes`; returns how many bytes the header length takes.
fn header_length_width(bytes: &[u8], path: &str) -> Result<usize> {
    let magic = bytes.get(..MAGIC.len()).ok_or_else(|| {
        npy_err(
            path,
            format!(
                "not an .npy file: {} bytes is too short to hold the .npy magic string",
                bytes.len()
            ),
        )
    })?;
    if magic != MAGIC {
        return Err(npy_err(
            path,
            "not an .npy file: missing the magic string \\x93NUMPY",
        ));
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => {
            return Err(npy_err(
                path,
                "truncated: the file ends inside the format version",
            ))
        }
    };
    match (major, minor) {
        (1, 0) => Ok(2),
        (2, 0) | (3, 0) => Ok(4),
        _ => Err(npy_err(
            path,
            format!("unsupported .npy format version {major}.{minor}: expected 1.0, 2.0 or 3.0"),
        )),
    }
}

/// Parses the bytes of a float32 `.npy` file. `path_for_errors` names the source in error
/// messages (use `"<bytes>"` when there is no file).
pub fn parse_f32(bytes: &[u8], path_for_errors: &str) -> Result<ArrayD<f32>> {
    let path = path_for_errors;
    let prefix = parse_prefix(bytes, path)?;
    let data = bytes.get(prefix.header_end..).unwrap_or(&[]);
    check_data_len(data.len(), &prefix, path)?;
    values(data, prefix, path)
}

/// The preamble and header of `bytes` (which may end there), checked.
fn parse_prefix(bytes: &[u8], path: &str) -> Result<Prefix> {
    let len_size = header_length_width(bytes, path)?;

    // Header length and header.
    let header_start = 8 + len_size;
    let len_bytes = bytes.get(8..header_start).ok_or_else(|| {
        npy_err(
            path,
            format!(
                "truncated: the file ends inside the header length ({} bytes in all)",
                bytes.len()
            ),
        )
    })?;
    let header_len = header_length(len_bytes, path)?;
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            npy_err(
                path,
                format!(
                    "header length {header_len} points past the end of the file \
                     ({} bytes in all, header starts at byte {header_start})",
                    bytes.len()
                ),
            )
        })?;
    let header_bytes = bytes
        .get(header_start..header_end)
        .ok_or_else(|| npy_err(path, "header length points past the end of the file"))?;
    let header = std::str::from_utf8(header_bytes)
        .ok()
        .filter(|h| h.is_ascii())
        .ok_or_else(|| npy_err(path, "malformed header: it is not plain ASCII text"))?;

    let parsed = parse_header(header).map_err(|reason| npy_err(path, reason))?;

    if parsed.descr != DESCR {
        return Err(npy_err(
            path,
            format!(
                "unsupported dtype '{}': expected little-endian float32 '{DESCR}'",
                parsed.descr
            ),
        ));
    }
    if parsed.fortran_order {
        return Err(npy_err(
            path,
            "Fortran-order arrays are not supported; save with np.ascontiguousarray",
        ));
    }

    // Size check before any allocation of the declared size.
    let shape = parsed.shape;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            npy_err(
                path,
                format!("shape {shape:?} is too large: its element count overflows"),
            )
        })?;
    let data_len = count.checked_mul(ELEM).ok_or_else(|| {
        npy_err(
            path,
            format!("shape {shape:?} is too large: {count} elements overflow the byte count"),
        )
    })?;
    Ok(Prefix {
        header_end,
        shape,
        count,
        data_len,
    })
}

/// Refuses data of `held` bytes where the header declares another size.
fn check_data_len(held: usize, prefix: &Prefix, path: &str) -> Result<()> {
    let (count, data_len) = (prefix.count, prefix.data_len);
    if held < data_len {
        return Err(npy_err(
            path,
            format!(
                "truncated: header declares {count} elements ({data_len} bytes) but the file \
                 holds only {held} data bytes"
            ),
        ));
    }
    if held > data_len {
        return Err(npy_err(
            path,
            format!(
                "{} trailing bytes: header declares {count} elements ({data_len} bytes) but \
                 the file holds {held} data bytes",
                held - data_len
            ),
        ));
    }
    Ok(())
}

/// The array of `data`, which check_data_len has found the header's size.
fn values(data: &[u8], prefix: Prefix, path: &str) -> Result<ArrayD<f32>> {
    let (shape, count) = (prefix.shape, prefix.count);
    // `data.len() == count * 4`, so this allocation is bounded by the input size.
    let mut values = Vec::new();
    values.try_reserve_exact(count).map_err(|_| {
        npy_err(
            path,
            format!("cannot allocate {} bytes for its values", data.len()),
        )
    })?;
    for chunk in data.chunks_exact(ELEM) {
        let mut word = [0u8; ELEM];
        word.copy_from_slice(chunk);
        values.push(f32::from_le_bytes(word));
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| npy_err(path, format!("shape {shape:?} cannot be represented: {e}")))
}

/// Serializes an array as a version 1.0 `.npy` file: `'<f4'`, `fortran_order: False`, data in
/// C (row-major) order whatever the view's memory layout, header padded with spaces and ended
/// with `'\n'` so that the data starts at a multiple of 64 bytes. An `Allocation` error where
/// the host cannot hold the file's bytes.
pub fn to_bytes(array: &ArrayViewD<f32>) -> Result<Vec<u8>> {
    let shape = array.shape();
    let shape_text = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    };
    let mut header =
        format!("{{'descr': '{DESCR}', 'fortran_order': False, 'shape': {shape_text}, }}");

    // Version 1.0 has a 2-byte header length; a header longer than that (thousands of
    // dimensions) needs version 2.0, as numpy does.
    let mut prefix_len = MAGIC.len() + 2 + 2;
    let mut version = [1u8, 0];
    if prefix_len + header.len() + 1 + ALIGN > u16::MAX as usize {
        prefix_len = MAGIC.len() + 2 + 4;
        version = [2, 0];
    }
    let unpadded = prefix_len + header.len() + 1; // + 1 for the final '\n'
    let pad = (ALIGN - unpadded % ALIGN) % ALIGN;
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');
    let header_len = header.len();

    let mut out = crate::cpu::with_room(
        prefix_len + header_len + array.len() * ELEM,
        "the bytes of an .npy file",
    )?;
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version);
    if version[0] == 1 {
        // Fits: checked above.
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    // `iter()` walks in logical (row-major) order regardless of strides.
    for &v in array.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes an array as a version 1.0 float32 `.npy` file (see [`to_bytes`]).
pub fn write_f32(path: &Path, array: &ArrayViewD<f32>) -> Result<()> {
    std::fs::write(path, to_bytes(array)?).map_err(|source| BnError::Io {
        path: path.display().to_string(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Header parsing: a tiny recursive-descent parser for exactly the Python dict literal numpy
// writes, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, want: u8) -> std::result::Result<(), String> {
        self.skip_ws();
        match self.peek() {
            Some(c) if c == want => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => Err(format!(
                "malformed header: expected '{}' at offset {} but found '{}'",
                want as char,
                self.pos,
                (c as char).escape_default()
            )),
            None => Err(format!(
                "malformed header: expected '{}' but the header ended",
                want as char
            )),
        }
    }

    /// A single- or double-quoted string without escapes.
    fn string(&mut self) -> std::result::Result<&'a str, String> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            Some(c) => {
                return Err(format!(
                    "malformed header: expected a quoted string at offset {} but found '{}'",
                    self.pos,
                    (c as char).escape_default()
                ))
            }
            None => return Err("malformed header: expected a quoted string".to_string()),
        };
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                None => return Err("malformed header: unterminated string".to_string()),
                Some(b'\\') => {
                    return Err("malformed header: escapes in strings are not supported".into())
                }
                Some(c) if c == quote => break,
                Some(_) => self.pos += 1,
            }
        }
        let s = self
            .text
            .get(start..self.pos)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| "malformed header: bad string".to_string())?;
        self.pos += 1; // closing quote
        Ok(s)
    }

    /// A Python identifier-like word (`True`, `False`, ...).
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.pos += 1;
        }
        self.text
            .get(start..self.pos)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        match self.word() {
            "True" => Ok(true),
            "False" => Ok(false),
            "" => Err(format!(
                "malformed header: expected True or False for 'fortran_order' at offset {}",
                self.pos
            )),
            other => Err(format!(
                "malformed header: expected True or False for 'fortran_order', found '{other}'"
            )),
        }
    }

    /// A non-negative decimal integer.
    fn dim(&mut self) -> std::result::Result<usize, String> {
        self.skip_ws();
        if self.peek() == Some(b'-') {
            return Err("malformed header: negative dimension in 'shape'".to_string());
        }
        let start = self.pos;
        let mut value: usize = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(usize::from(c - b'0')))
                .ok_or_else(|| {
                    "malformed header: a dimension in 'shape' does not fit in usize".to_string()
                })?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(format!(
                "malformed header: expected a non-negative integer in 'shape' at offset {}",
                self.pos
            ));
        }
        // Python 2 era files may write long integers as `3L`: numpy still reads them.
        if self.peek() == Some(b'L') {
            self.pos += 1;
        }
        Ok(value)
    }

    /// A tuple of dimensions: `()`, `(5,)`, `(2, 3)`, `(2, 3,)`.
    fn shape(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(b')') {
                self.pos += 1;
                break;
            }
            if !dims.is_empty() && !trailing_comma {
                return Err(format!(
                    "malformed header: expected ',' or ')' in 'shape' at offset {}",
                    self.pos
                ));
            }
            dims.push(self.dim()?);
            self.skip_ws();
            trailing_comma = self.peek() == Some(b',');
            if trailing_comma {
                self.pos += 1;
            }
        }
        // In Python `(5)` is the integer 5, not a tuple.
        if dims.len() == 1 && !trailing_comma {
            return Err(
                "malformed header: 'shape' must be a tuple; a single dimension needs a trailing \
                 comma, as in (5,)"
                    .to_string(),
            );
        }
        Ok(dims)
    }
}

fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let mut cur = Cursor {
        text: text.as_bytes(),
        pos: 0,
    };
    let mut descr: Option<String> = None;
    let mut fortran_order: Option<bool> = None;
    let mut shape: Option<Vec<usize>> = None;

    cur.expect(b'{')?;
    let mut need_separator = false;
    loop {
        cur.skip_ws();
        if cur.peek() == Some(b'}') {
            cur.pos += 1;
            break;
        }
        if need_separator {
            cur.expect(b',')?;
            cur.skip_ws();
            if cur.peek() == Some(b'}') {
                cur.pos += 1;
                break;
            }
        }
        let key = cur.string()?;
        cur.expect(b':')?;
        let duplicate = match key {
            "descr" => {
                cur.skip_ws();
                if !matches!(cur.peek(), Some(b'\'' | b'"')) {
                    return Err(format!(
                        "unsupported dtype: 'descr' is not a simple type string (structured \
                         dtypes are not supported): expected little-endian float32 '{DESCR}'"
                    ));
                }
                descr.replace(cur.string()?.to_string()).is_some()
            }
            "fortran_order" => fortran_order.replace(cur.boolean()?).is_some(),
            "shape" => shape.replace(cur.shape()?).is_some(),
            other => {
                return Err(format!(
                    "malformed header: unexpected key '{other}' (expected exactly 'descr', \
                     'fortran_order' and 'shape')"
                ))
            }
        };
        if duplicate {
            return Err(format!("malformed header: key '{key}' appears twice"));
        }
        need_separator = true;
    }
    cur.skip_ws();
    if cur.pos != cur.text.len() {
        return Err(format!(
            "malformed header: unexpected text after the closing '}}' at offset {}",
            cur.pos
        ));
    }

    let missing = |k: &str| format!("malformed header: key '{k}' is missing");
    Ok(Header {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, ArrayD, IxDyn, ShapeBuilder};

    fn reason(err: BnError) -> String {
        match err {
            BnError::Npy { path, reason } => {
                assert_eq!(path, BYTES_PATH);
                reason
            }
            other => panic!("expected an Npy error, got {other:?}"),
        }
    }

    fn parse_err(bytes: &[u8]) -> String {
        reason(parse_f32(bytes, BYTES_PATH).expect_err("parse should fail"))
    }

    /// Builds a file from a header string exactly as numpy does (v1.0, padded to 64 bytes).
    fn file_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn roundtrip(shape: &[usize]) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.25).collect();
        let a = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
        let bytes = to_bytes(&a.view()).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(
            (10 + header_len) % 64,
            0,
            "data must start on a 64-byte boundary"
        );
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(bytes.len(), 10 + header_len + 4 * n);
        let b = parse_f32(&bytes, BYTES_PATH).unwrap();
        assert_eq!(b.shape(), shape);
        assert_eq!(a, b);
    }

    #[test]
    fn roundtrip_shapes() {
        roundtrip(&[]);
        roundtrip(&[0]);
        roundtrip(&[3]);
        roundtrip(&[2, 3, 4]);
        roundtrip(&[2, 0, 5]);
        roundtrip(&[1, 1, 1, 1, 7]);
    }

    #[test]
    fn roundtrip_special_values_bit_exact() {
        let values = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::from_bits(1), // smallest subnormal
            f32::MAX,
            f32::from_bits(0x7fc0_1234), // NaN with payload
        ];
        let a = ArrayD::from_shape_vec(IxDyn(&[8]), values.to_vec()).unwrap();
        let b = parse_f32(&to_bytes(&a.view()).unwrap(), BYTES_PATH).unwrap();
        for (x, y) in a.iter().zip(b.iter()) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    fn header_of(bytes: &[u8]) -> &str {
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        std::str::from_utf8(&bytes[10..10 + len]).unwrap()
    }

    #[test]
    fn header_text_matches_numpy() {
        // numpy.save(np.zeros((2, 3), np.float32)) writes exactly this 128-byte preamble.
        let a = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
        let bytes = to_bytes(&a.view()).unwrap();
        assert_eq!(bytes.len(), 128 + 24);
        let header = header_of(&bytes);
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with(" \n"));
        let s = ArrayD::<f32>::zeros(IxDyn(&[5]));
        assert!(header_of(&to_bytes(&s.view()).unwrap()).contains("'shape': (5,), }"));
        let z = ArrayD::<f32>::zeros(IxDyn(&[]));
        assert!(header_of(&to_bytes(&z.view()).unwrap()).contains("'shape': (), }"));
    }

    #[test]
    fn writes_c_order_for_fortran_and_strided_views() {
        let c = Array::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let f = Array::from_shape_vec((2, 3).f(), vec![1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
        assert_eq!(c, f);
        let c_bytes = to_bytes(&c.view().into_dyn()).unwrap();
        let f_bytes = to_bytes(&f.view().into_dyn()).unwrap();
        assert_eq!(c_bytes, f_bytes);
        // Transposed view and a strided slice.
        let t = c.t();
        let back = parse_f32(&to_bytes(&t.into_dyn()).unwrap(), BYTES_PATH).unwrap();
        assert_eq!(back.shape(), &[3, 2]);
        assert_eq!(back.as_slice().unwrap(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let s = c.slice(ndarray::s![.., ..;2]);
        let back = parse_f32(&to_bytes(&s.into_dyn()).unwrap(), BYTES_PATH).unwrap();
        assert_eq!(back.as_slice().unwrap(), &[1.0, 3.0, 4.0, 6.0]);
    }

    #[test]
    fn reads_numpy_written_header() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let bytes = file_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        assert_eq!(bytes.len(), 128 + 24); // numpy's usual 128-byte preamble
        let a = parse_f32(&bytes, BYTES_PATH).unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a.as_slice().unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn header_syntax_variants() {
        let data = f32_bytes(&[1.0, 2.0]);
        for dict in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{\"shape\": (2,), \"descr\": \"<f4\", \"fortran_order\": False}",
            "{ 'fortran_order' : False , 'shape' : ( 2 , ) , 'descr' : '<f4' , }",
            "{'descr':'<f4','fortran_order':False,'shape':(1, 2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }",
        ] {
            let a = parse_f32(&file_with_header(dict, &data), BYTES_PATH)
                .unwrap_or_else(|e| panic!("{dict}: {e}"));
            assert_eq!(a.len(), 2, "{dict}");
        }
        // Scalar.
        let a = parse_f32(
            &file_with_header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                &f32_bytes(&[7.5]),
            ),
            BYTES_PATH,
        )
        .unwrap();
        assert_eq!(a.ndim(), 0);
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), vec![7.5]);
    }

    #[test]
    fn versions_2_and_3() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        for major in [2u8, 3] {
            let mut bytes = vec![0x93, b'N', b'U', b'M', b'P', b'Y', major, 0];
            bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            bytes.extend_from_slice(dict.as_bytes());
            bytes.extend_from_slice(&f32_bytes(&[1.0, -2.0]));
            let a = parse_f32(&bytes, BYTES_PATH).unwrap();
            assert_eq!(a.as_slice().unwrap(), &[1.0, -2.0]);
        }
    }

    /// A new named pipe `name` in `dir`.
    #[cfg(unix)]
    fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
        let fifo = dir.join(name);
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
        fifo
    }

    /// Why read_f32 refuses `path`, which it must say within ten seconds (`waited` otherwise).
    #[cfg(unix)]
    fn refusal_in_time(path: &Path, waited: &str) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_f32(&r).unwrap_err().to_string());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect(waited)
    }

    /// What does not start as an .npy is refused from its first bytes, before the rest is
    /// read: here a pipe whose writer sent a few bytes and stays open, so that a reader that
    /// waits for the end never returns (as /dev/zero never ends).
    #[cfg(unix)]
    #[test]
    fn refuses_a_stream_from_its_first_bytes() {
        use std::io::Write;
        use std::time::Duration;
        let dir = std::env::temp_dir().join(format!("npy-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = fifo(&dir, "x.npy");
        let w = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&w).unwrap();
            f.write_all(b"not an .npy file").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        });
        let why = refusal_in_time(&fifo, "read_f32 waited for the end of the stream");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(why.contains("magic"), "{why}");
    }

    /// A stream with a valid header and data that never ends is refused once it has given
    /// one byte more than the header declares, not read until memory runs out; a stream
    /// header longer than any float32 array's is refused before it is read.
    #[cfg(unix)]
    #[test]
    fn refuses_a_stream_past_its_declared_data() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("npy-fifo-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut long_header = b"\x93NUMPY\x02\x00".to_vec();
        long_header.extend_from_slice(&(MAX_STREAM_HEADER as u32 + 1).to_le_bytes());
        for (name, head, why) in [
            ("endless.npy", header_of_roundtrip(), "goes on past them"),
            ("long_header.npy", long_header, "read from a stream"),
        ] {
            let fifo = fifo(&dir, name);
            let w = fifo.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(&w).unwrap();
                f.write_all(&head).unwrap();
                let zeros = vec![0u8; 1 << 16];
                // Until the reader closes its end.
                while f.write_all(&zeros).is_ok() {}
            });
            let got = refusal_in_time(&fifo, "read_f32 read on past the declared data");
            assert!(got.contains(why), "{name}: {got}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stream of more than one step (16 MiB) reads whole, and one that ends before the
    /// header's count, past its first step, is refused as truncated.
    #[cfg(unix)]
    #[test]
    fn reads_a_stream_over_several_steps_and_refuses_one_cut_short() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("npy-fifo-steps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let count = (STREAM_STEP / ELEM) * 5 / 2 + 3;
        let a = ArrayD::from_shape_vec(IxDyn(&[count]), (0..count).map(|i| i as f32).collect())
            .unwrap();
        let bytes = to_bytes(&a.view()).unwrap();
        for (name, cut) in [("whole.npy", 0), ("cut.npy", STREAM_STEP / 2)] {
            let fifo = fifo(&dir, name);
            let (w, data) = (fifo.clone(), bytes[..bytes.len() - cut].to_vec());
            let writer = std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(&w).unwrap();
                let _ = f.write_all(&data);
            });
            let got = read_f32(&fifo);
            writer.join().unwrap();
            if cut == 0 {
                let got = got.unwrap();
                assert_eq!(got, a);
                assert!(got.into_raw_vec_and_offset().0.capacity() == count);
            } else {
                let why = got.unwrap_err().to_string();
                assert!(why.contains("truncated"), "{why}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_wrong_magic() {
        let mut bytes = roundtrip_bytes();
        bytes[1] = b'X';
        assert!(parse_err(&bytes).contains("magic"));
        assert!(parse_err(b"").contains("magic"));
        assert!(parse_err(b"\x93NUM").contains("magic"));
        assert!(parse_err(b"PK\x03\x04 this is a zip").contains("magic"));
    }

    /// roundtrip_bytes without its data (four f32).
    fn header_of_roundtrip() -> Vec<u8> {
        let bytes = roundtrip_bytes();
        bytes[..bytes.len() - 16].to_vec()
    }

    fn roundtrip_bytes() -> Vec<u8> {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        to_bytes(&a.view()).unwrap()
    }

    #[test]
    fn refuses_bad_version() {
        for (major, minor) in [(0u8, 0u8), (1, 1), (4, 0), (2, 1), (255, 255)] {
            let mut bytes = roundtrip_bytes();
            bytes[6] = major;
            bytes[7] = minor;
            let r = parse_err(&bytes);
            assert!(r.contains(&format!("version {major}.{minor}")), "{r}");
        }
        assert!(parse_err(b"\x93NUMPY\x01").contains("truncated"));
        assert!(parse_err(b"\x93NUMPY\x01\x00\x10").contains("truncated"));
        assert!(parse_err(b"\x93NUMPY\x02\x00\x10\x00").contains("truncated"));
    }

    #[test]
    fn refuses_malformed_headers() {
        let data = f32_bytes(&[1.0, 2.0]);
        for dict in [
            "",
            "not a dict",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'shape': (2,)}",
            "{'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': [2]}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2 2)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk",
            "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}",
            "{'descr': \"<f4', 'fortran_order': False, 'shape': (2,)}",
            "{descr: '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ,}",
            "{,}",
        ] {
            let r = parse_err(&file_with_header(dict, &data));
            assert!(r.contains("malformed header"), "{dict:?} gave {r:?}");
        }
        // Non-ASCII bytes in the header.
        let mut bytes = file_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        bytes[12] = 0xff;
        assert!(parse_err(&bytes).contains("malformed header"));
    }

    #[test]
    fn refuses_other_dtypes() {
        for descr in ["<f8", ">f4", "|u1", "<i4", "<f2", "=f4", "f4", "<c8", "|O"] {
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
            let r = parse_err(&file_with_header(&dict, &[0; 8][..4]));
            assert_eq!(
                r,
                format!("unsupported dtype '{descr}': expected little-endian float32 '<f4'")
            );
        }
        let r = parse_err(&file_with_header(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        ));
        assert!(r.contains("unsupported dtype"), "{r}");
    }

    #[test]
    fn refuses_fortran_order() {
        let r = parse_err(&file_with_header(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &f32_bytes(&[0.0; 6]),
        ));
        assert_eq!(
            r,
            "Fortran-order arrays are not supported; save with np.ascontiguousarray"
        );
    }

    #[test]
    fn refuses_truncated_data() {
        let bytes = roundtrip_bytes(); // 4 elements, 16 data bytes
        let r = parse_err(&bytes[..bytes.len() - 1]);
        assert_eq!(
            r,
            "truncated: header declares 4 elements (16 bytes) but the file holds only 15 data bytes"
        );
        let r = parse_err(&bytes[..128]);
        assert!(r.starts_with("truncated"), "{r}");
        // Huge declared size, no data: must fail fast without allocating.
        let r = parse_err(&file_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",
            &[],
        ));
        assert_eq!(
            r,
            "truncated: header declares 1000000000000 elements (4000000000000 bytes) but the \
             file holds only 0 data bytes"
        );
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = roundtrip_bytes();
        bytes.push(0);
        let r = parse_err(&bytes);
        assert!(r.contains("trailing"), "{r}");
        let mut bytes = roundtrip_bytes();
        bytes.extend_from_slice(&[0; 4]);
        assert!(parse_err(&bytes).contains("trailing"));
    }

    #[test]
    fn refuses_header_length_past_eof() {
        let mut bytes = roundtrip_bytes();
        bytes[8] = 0xff;
        bytes[9] = 0xff;
        let r = parse_err(&bytes);
        assert!(r.contains("past the end of the file"), "{r}");
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        v2.extend_from_slice(b"{}");
        assert!(parse_err(&v2).contains("past the end of the file"));
    }

    #[test]
    fn refuses_shape_product_overflow() {
        let big = 1usize << 40;
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({big}, {big}), }}");
        let r = parse_err(&file_with_header(&dict, &[]));
        assert!(r.contains("overflow"), "{r}");
        // Element count fits in usize but the byte count does not.
        let n = usize::MAX / 2;
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}");
        let r = parse_err(&file_with_header(&dict, &[]));
        assert!(r.contains("overflow"), "{r}");
        // Zero-sized but with huge other axes: no overflow, but ndarray refuses the shape,
        // which must surface as an error, not a panic.
        let dict = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (0, {}, {}), }}",
            usize::MAX,
            usize::MAX
        );
        assert!(parse_f32(&file_with_header(&dict, &[]), BYTES_PATH).is_err());
    }

    #[test]
    fn file_roundtrip_and_io_errors() {
        let dir = std::env::temp_dir().join(format!("npy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let a =
            ArrayD::from_shape_vec(IxDyn(&[3, 1, 2]), (0..6).map(|i| i as f32).collect()).unwrap();
        write_f32(&path, &a.view()).unwrap();
        assert_eq!(read_f32(&path).unwrap(), a);

        // Parse errors carry the path as given.
        let bad = dir.join("bad.npy");
        std::fs::write(&bad, b"nope").unwrap();
        match read_f32(&bad) {
            Err(BnError::Npy { path, .. }) => assert_eq!(path, bad.display().to_string()),
            other => panic!("expected Npy error, got {other:?}"),
        }
        let missing = dir.join("missing.npy");
        match read_f32(&missing) {
            Err(BnError::Io { path, .. }) => assert_eq!(path, missing.display().to_string()),
            other => panic!("expected Io error, got {other:?}"),
        }
        match write_f32(&dir.join("no/such/dir/x.npy"), &a.view()) {
            Err(BnError::Io { .. }) => {}
            other => panic!("expected Io error, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Deterministic fuzzing: random mutations and truncations of valid files must never
    /// panic, and whatever parses must be self-consistent.
    #[test]
    fn fuzz_mutations_never_panic() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = vec![
            roundtrip_bytes(),
            to_bytes(&ArrayD::<f32>::zeros(IxDyn(&[])).view()).unwrap(),
            to_bytes(&ArrayD::<f32>::zeros(IxDyn(&[3, 0, 2])).view()).unwrap(),
            file_with_header(
                "{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"<f4\"}",
                &f32_bytes(&[1.0, 2.0, 3.0]),
            ),
        ];
        let interesting = b"{}(),:'\" 0123456789-LTF\n\x00\xff";
        let mut parsed_ok = 0usize;
        for _ in 0..20_000 {
            let seed = &seeds[(next() % seeds.len() as u64) as usize];
            let mut bytes = seed.clone();
            let edits = 1 + next() % 4;
            for _ in 0..edits {
                match next() % 6 {
                    0 if !bytes.is_empty() => {
                        let i = (next() % bytes.len() as u64) as usize;
                        bytes[i] = next() as u8;
                    }
                    1 if !bytes.is_empty() => {
                        let i = (next() % bytes.len() as u64) as usize;
                        bytes[i] = interesting[(next() % interesting.len() as u64) as usize];
                    }
                    2 => {
                        let cut = (next() % (bytes.len() as u64 + 1)) as usize;
                        bytes.truncate(cut);
                    }
                    3 if !bytes.is_empty() => {
                        let i = (next() % bytes.len() as u64) as usize;
                        bytes.remove(i);
                    }
                    4 => {
                        let i = (next() % (bytes.len() as u64 + 1)) as usize;
                        bytes.insert(i, interesting[(next() % interesting.len() as u64) as usize]);
                    }
                    _ if bytes.len() >= 10 => {
                        // Mess with the header length field.
                        let i = 8 + (next() % 2) as usize;
                        bytes[i] = next() as u8;
                    }
                    _ => {}
                }
            }
            if let Ok(a) = parse_f32(&bytes, BYTES_PATH) {
                parsed_ok += 1;
                assert!(a.len() * 4 < bytes.len());
                // Whatever parses must re-serialize and parse to the same array.
                let again = parse_f32(&to_bytes(&a.view()).unwrap(), BYTES_PATH).unwrap();
                assert_eq!(again.shape(), a.shape());
            }
        }
        // Some mutations (e.g. of data bytes) leave the file valid.
        assert!(parsed_ok > 0);
    }
}
