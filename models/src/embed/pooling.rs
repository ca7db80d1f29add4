//! How a sentence-transformers model turns token vectors into one sentence vector: the pooling
//! mode of its `1_Pooling/config.json` and whether `modules.json` ends in `Normalize`, read from
//! the model's own files rather than assumed.

use candle_core::{DType, Result, Tensor, D};
use serde::Deserialize;

/// Which token vectors make the sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The mean of the (unpadded) tokens' vectors: all-MiniLM and most sentence-transformers.
    Mean,
    /// The first token's vector (`[CLS]`): BGE and E5-style models.
    Cls,
    /// The element-wise maximum over the tokens.
    Max,
}

/// A model's pooling, and whether vectors are scaled to unit length after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// The pooling mode.
    pub mode: PoolingMode,
    /// Vectors are L2-normalised (`modules.json` lists `Normalize`).
    pub normalize: bool,
}

/// `1_Pooling/config.json`, the fields this crate reads.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

/// One entry of `modules.json`.
#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

impl Pooling {
    /// Reads the pooling from a model's files (their JSON text, where the model has them).
    /// Without a pooling config, a sentence-transformers model means mean pooling.
    pub fn from_configs(
        pooling_config: Option<&str>,
        modules: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let mode = match pooling_config {
            None => PoolingMode::Mean,
            Some(text) => {
                let config: PoolingConfig = serde_json::from_str(text)
                    .map_err(|e| format!("1_Pooling/config.json: {e}"))?;
                match (
                    config.pooling_mode_mean_tokens,
                    config.pooling_mode_cls_token,
                    config.pooling_mode_max_tokens,
                ) {
                    (true, false, false) => PoolingMode::Mean,
                    (false, true, false) => PoolingMode::Cls,
                    (false, false, true) => PoolingMode::Max,
                    _ => {
                        return Err("1_Pooling/config.json: exactly one of mean, cls and max \
                                    pooling must be on (other modes are not supported)"
                            .into())
                    }
                }
            }
        };
        let normalize = match modules {
            None => false,
            Some(text) => {
                let modules: Vec<Module> =
                    serde_json::from_str(text).map_err(|e| format!("modules.json: {e}"))?;
                modules.iter().any(|m| m.kind.ends_with(".Normalize"))
            }
        };
        Ok(Self { mode, normalize })
    }

    /// Pools `hidden` (`[batch, tokens, size]`) under `mask` (`[batch, tokens]`, 1 for a real
    /// token, 0 for padding) into `[batch, size]`.
    pub fn apply(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let pooled = match self.mode {
            PoolingMode::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            PoolingMode::Mean => {
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
            PoolingMode::Max => {
                // Padding must never win: push it far below any real value.
                let floor = ((mask.ones_like()? - &mask)? * -1e9)?;
                hidden.broadcast_add(&floor)?.max(1)?
            }
        };
        if !self.normalize {
            return Ok(pooled);
        }
        let norms = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norms)
    }
}

impl Pooling {
    /// Pools one text's token vectors (`rows`, `size` values each, no padding) into its vector.
    pub fn pool_rows(&self, rows: &[f32], size: usize) -> Vec<f32> {
        let tokens = rows.chunks_exact(size);
        let count = tokens.len().max(1) as f32;
        let mut pooled = match self.mode {
            PoolingMode::Cls => rows[..size].to_vec(),
            PoolingMode::Mean => {
                let mut total = vec![0f32; size];
                for token in tokens {
                    total.iter_mut().zip(token).for_each(|(t, v)| *t += v);
                }
                total.iter_mut().for_each(|t| *t /= count);
                total
            }
            PoolingMode::Max => {
                let mut top = vec![f32::NEG_INFINITY; size];
                for token in tokens {
                    top.iter_mut().zip(token).for_each(|(t, v)| *t = t.max(*v));
                }
                top
            }
        };
        if self.normalize {
            let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            pooled.iter_mut().for_each(|v| *v /= norm);
        }
        pooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reads_the_configs() {
        let mean = r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#;
        let modules = r#"[{"type": "sentence_transformers.models.Transformer"},
                          {"type": "sentence_transformers.models.Normalize"}]"#;
        assert_eq!(
            Pooling::from_configs(Some(mean), Some(modules)).unwrap(),
            Pooling {
                mode: PoolingMode::Mean,
                normalize: true
            }
        );
        let cls = r#"{"pooling_mode_cls_token": true}"#;
        assert_eq!(
            Pooling::from_configs(Some(cls), None).unwrap().mode,
            PoolingMode::Cls
        );
        let two = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#;
        assert!(Pooling::from_configs(Some(two), None).is_err());
    }

    #[test]
    fn mean_pooling_skips_padding_and_normalises() -> Result<()> {
        let hidden = Tensor::new(&[[[1f32, 0.], [3., 4.], [100., 100.]]], &Device::Cpu)?;
        let mask = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu)?;
        let plain = Pooling {
            mode: PoolingMode::Mean,
            normalize: false,
        };
        assert_eq!(plain.apply(&hidden, &mask)?.to_vec2::<f32>()?, [[2., 2.]]);
        let unit = Pooling {
            normalize: true,
            ..plain
        };
        let v = unit.apply(&hidden, &mask)?.to_vec2::<f32>()?;
        assert!((v[0][0] - 0.5f32.sqrt()).abs() < 1e-6);
        let max = Pooling {
            mode: PoolingMode::Max,
            normalize: false,
        };
        assert_eq!(max.apply(&hidden, &mask)?.to_vec2::<f32>()?, [[3., 4.]]);
        // The same on the unpadded rows.
        let rows = [1f32, 0., 3., 4.];
        assert_eq!(plain.pool_rows(&rows, 2), [2., 2.]);
        assert!((unit.pool_rows(&rows, 2)[0] - 0.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(max.pool_rows(&rows, 2), [3., 4.]);
        let cls = Pooling {
            mode: PoolingMode::Cls,
            normalize: false,
        };
        assert_eq!(cls.pool_rows(&rows, 2), [1., 0.]);
        Ok(())
    }
}
