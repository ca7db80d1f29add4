//! Reading CTranslate2 `model.bin` files (the format of faster-whisper's model folders):
//! little-endian; a u32 format version, the spec name and revision, then named variables (name,
//! rank, dims, dtype, bytes), then aliases.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;

use super::SttError;

/// A variable's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 8-bit integer (quantized weights, or flags).
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One named array.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Little-endian elements.
    pub data: Vec<u8>,
}

impl Variable {
    /// The elements as f32 (floats are widened; integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        let chunks = self.data.chunks_exact(self.dtype.size());
        match self.dtype {
            DType::F32 => chunks
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DType::F16 => chunks
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::BF16 => chunks
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            DType::I8 => self.data.iter().map(|&b| b as i8 as f32).collect(),
            DType::I16 => chunks
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
                .collect(),
            DType::I32 => chunks
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
        }
    }

    /// A scalar's value as an integer.
    pub fn scalar(&self) -> Option<i64> {
        let values = self.to_f32();
        match (self.dims.is_empty(), values.as_slice()) {
            (true, [value]) => Some(*value as i64),
            _ => None,
        }
    }
}

/// IEEE 754 half to f32.
pub fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// IEEE 754 f32 to half, rounding to nearest even.
pub fn f32_to_half(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rest = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round = rest > halfway || (rest == halfway && half & 1 == 1);
        return sign | (half + round as u32) as u16;
    }
    let half = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    let round = rest > 0x1000 || (rest == 0x1000 && half & 1 == 1);
    sign | (half + round as u32) as u16
}

/// A CTranslate2 model: its spec and variables by name (aliases resolved).
#[derive(Debug)]
pub struct Ct2Model {
    /// The spec, e.g. `WhisperSpec`.
    pub spec: String,
    /// Variables by name.
    pub variables: HashMap<String, Variable>,
}

impl Ct2Model {
    /// Reads `model.bin`.
    pub fn read(path: &Path) -> Result<Self, SttError> {
        let bad = |reason: String| SttError::Import {
            path: path.into(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let mut r = io::BufReader::new(file);
        let io_error = |e: io::Error| bad(format!("truncated or unreadable: {e}"));
        let version = read_u32(&mut r).map_err(io_error)?;
        if !(5..=6).contains(&version) {
            return Err(bad(format!(
                "CTranslate2 format version {version} is not supported (expected 5 or 6); is this a model.bin?"
            )));
        }
        let spec = read_string(&mut r).map_err(io_error)?;
        let _revision = read_u32(&mut r).map_err(io_error)?;
        let count = read_u32(&mut r).map_err(io_error)?;
        let mut variables = HashMap::new();
        for _ in 0..count {
            let name = read_string(&mut r).map_err(io_error)?;
            let mut rank = [0u8; 1];
            r.read_exact(&mut rank).map_err(io_error)?;
            let dims = (0..rank[0])
                .map(|_| read_u32(&mut r).map(|d| d as usize))
                .collect::<io::Result<Vec<_>>>()
                .map_err(io_error)?;
            let mut code = [0u8; 1];
            r.read_exact(&mut code).map_err(io_error)?;
            let dtype = DType::from_code(code[0])
                .ok_or_else(|| bad(format!("variable {name}: unknown dtype {}", code[0])))?;
            let bytes = read_u32(&mut r).map_err(io_error)? as usize;
            let elements: usize = dims.iter().product();
            if bytes != elements * dtype.size() {
                return Err(bad(format!(
                    "variable {name}: {bytes} bytes for dims {dims:?} of {dtype:?}"
                )));
            }
            let mut data = vec![0u8; bytes];
            r.read_exact(&mut data).map_err(io_error)?;
            variables.insert(name, Variable { dims, dtype, data });
        }
        // Aliases name existing variables (e.g. a tied output projection).
        if let Ok(aliases) = read_u32(&mut r) {
            for _ in 0..aliases {
                let (alias, target) = (
                    read_string(&mut r).map_err(io_error)?,
                    read_string(&mut r).map_err(io_error)?,
                );
                if let Some(v) = variables.get(&target).cloned() {
                    variables.insert(alias, v);
                }
            }
        }
        Ok(Self { spec, variables })
    }

    /// A variable, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Variable, String> {
        self.variables
            .get(name)
            .ok_or_else(|| format!("missing variable {name}"))
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u16::from_le_bytes(len) as usize];
    r.read_exact(&mut bytes)?;
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_trip() {
        for x in [0.0f32, 1.0, -2.5, 0.1, 65504.0, 6.1e-5, 1e-7, -3.0e-6] {
            let back = half_to_f32(f32_to_half(x));
            assert!((back - x).abs() <= x.abs() * 1e-3 + 6e-8, "{x} -> {back}");
        }
        assert_eq!(f32_to_half(1.0), 0x3c00);
        assert_eq!(half_to_f32(0xc000), -2.0);
    }
}
