//! The built-in embedder: all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) on candle's CPU
//! backend, with the model's own WordPiece tokenizer.
//!
//! What sentence-transformers does, and so what the reference vectors in the fixture test
//! expect: tokens truncated at the model's 256-token window (not the 128 that `tokenizer.json`
//! says), no padding of a single text, mean pooling of the last hidden states over the attention
//! mask, then L2 normalisation. Texts embedded together are padded to the longest of their chunk
//! and the padding is masked out of both the attention and the mean, so a text's vector does not
//! depend on what it was batched with (beyond float rounding).

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// The model's name as answers and partitions carry it.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Its vector length.
pub const DIMENSIONS: usize = 384;
/// The window sentence-transformers uses for it (`max_seq_length`), in tokens with [CLS], [SEP].
pub const MAX_TOKENS: usize = 256;

/// One text's vector, and whether the text was longer than the window (only its first window
/// was embedded).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Unit-length vector.
    pub vector: Vec<f32>,
    /// The text did not fit the model's window.
    pub truncated: bool,
}

/// The loaded model and tokenizer. `embed` runs on the calling thread (the pool's).
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Texts per forward pass; longer lists are cut into chunks of similar length.
    max_batch: usize,
}

impl BertEmbedder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir` (what
    /// `scripts/fetch-model.py` extracts).
    pub fn load(dir: &Path, max_batch: usize) -> anyhow::Result<Self> {
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let read = |name: &str| {
            std::fs::read(file(name)).with_context(|| {
                format!(
                    "cannot read {} (run scripts/fetch-model.py, or set embedder.model_dir)",
                    file(name).display()
                )
            })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .with_context(|| format!("{} is not a BERT config", file("config.json").display()))?;
        anyhow::ensure!(
            config.hidden_size == DIMENSIONS,
            "{} describes a model of {} dimensions, not all-MiniLM-L6-v2's {DIMENSIONS}",
            file("config.json").display(),
            config.hidden_size
        );
        let device = Device::Cpu;
        let weights =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .with_context(|| {
                    format!("{} is not a safetensors file", file("model.safetensors").display())
                })?;
        let model = BertModel::load(weights, &config).with_context(|| {
            format!("{} does not hold a BERT model", file("model.safetensors").display())
        })?;
        let mut tokenizer = Tokenizer::from_file(file("tokenizer.json")).map_err(|e| {
            anyhow::anyhow!("{} is not a tokenizer: {e}", file("tokenizer.json").display())
        })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None::<PaddingParams>);
        Ok(Self { model, tokenizer, device, max_batch: max_batch.max(1) })
    }

    /// The token ids of `text` as the model sees them ([CLS] … [SEP], at most the window).
    pub fn token_ids(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding =
            self.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Embeds `texts`, in order. Sorted by length and cut into chunks of `max_batch`, each chunk
    /// one forward pass padded to its longest text.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Embedding>> {
        let mut encoded = Vec::with_capacity(texts.len());
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
            let truncated = !encoding.get_overflowing().is_empty();
            encoded.push((encoding.get_ids().to_vec(), truncated));
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encoded[i].0.len());
        let mut out: Vec<Option<Embedding>> = vec![None; texts.len()];
        for chunk in order.chunks(self.max_batch) {
            let ids: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].0.as_slice()).collect();
            let vectors = self.forward(&ids)?;
            for (&i, vector) in chunk.iter().zip(vectors) {
                out[i] = Some(Embedding { vector, truncated: encoded[i].1 });
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| anyhow::anyhow!("a text was not embedded")))
            .collect()
    }

    /// One forward pass over token id lists padded to the longest; mean-pooled, normalised.
    fn forward(&self, ids: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let batch = ids.len();
        let width = ids.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let mut flat_ids = Vec::with_capacity(batch * width);
        let mut flat_mask = Vec::with_capacity(batch * width);
        for tokens in ids {
            flat_ids.extend_from_slice(tokens);
            flat_ids.extend(std::iter::repeat_n(0u32, width - tokens.len()));
            flat_mask.extend(std::iter::repeat_n(1u32, tokens.len()));
            flat_mask.extend(std::iter::repeat_n(0u32, width - tokens.len()));
        }
        let input = Tensor::from_vec(flat_ids, (batch, width), &self.device)?;
        let mask = Tensor::from_vec(flat_mask, (batch, width), &self.device)?;
        let token_types = input.zeros_like()?;
        let hidden = self.model.forward(&input, &token_types, Some(&mask))?; // (batch, width, 384)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, width, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, 384)
        let counts = mask.sum(1)?; // (batch, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model directory of `scripts/fetch-model.py` (which `make test` runs first).
    pub(crate) fn model_dir() -> PathBuf {
        std::env::var_os("MEMRING_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/memring/models/all-minilm-l6-v2")
        })
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        items: Vec<Item>,
        pairs: Vec<Pair>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        text: String,
        token_ids: Vec<u32>,
        embedding: Vec<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Pair {
        a: usize,
        b: usize,
        cosine: f64,
    }

    fn fixture() -> Fixture {
        let raw = include_str!("../../tests/fixtures/minilm-l6-v2-reference.json");
        serde_json::from_str(raw).expect("the fixture parses")
    }

    fn max_error(got: &[f32], want: &[f64]) -> f64 {
        got.iter().zip(want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn every_reference_item_matches_within_1e_5_one_by_one_and_batched() {
        let embedder = BertEmbedder::load(&model_dir(), 32).expect("model loads");
        let fixture = fixture();
        assert_eq!(fixture.items.len(), 44);
        for (i, item) in fixture.items.iter().enumerate() {
            let ids = embedder.token_ids(&item.text).expect("tokenizes");
            assert_eq!(ids, item.token_ids, "token ids of item {i} ({:?})", item.text);
        }
        let texts: Vec<&str> = fixture.items.iter().map(|i| i.text.as_str()).collect();
        let alone: Vec<Embedding> =
            texts.iter().map(|t| embedder.embed(&[t]).expect("embeds").remove(0)).collect();
        let batched = embedder.embed(&texts).expect("embeds a batch");
        for (i, item) in fixture.items.iter().enumerate() {
            assert_eq!(alone[i].vector.len(), DIMENSIONS);
            let e1 = max_error(&alone[i].vector, &item.embedding);
            let e2 = max_error(&batched[i].vector, &item.embedding);
            assert!(e1 <= 1e-5, "item {i} alone: max |Δ| {e1:e} ({:?})", item.text);
            assert!(e2 <= 1e-5, "item {i} batched: max |Δ| {e2:e} ({:?})", item.text);
        }
        // Only the item with more than 256 word pieces was cut to the window.
        let worst = fixture
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| max_error(&batched[i].vector, &item.embedding))
            .fold(0.0, f64::max);
        eprintln!("largest |Δ| over the 44 items × 384 values, batched: {worst:e}");
        let truncated: Vec<usize> = (0..texts.len()).filter(|&i| batched[i].truncated).collect();
        assert_eq!(truncated, [43]);
        for pair in &fixture.pairs {
            let cosine: f64 = alone[pair.a]
                .vector
                .iter()
                .zip(&alone[pair.b].vector)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((cosine - pair.cosine).abs() <= 1e-5, "pair {}-{}: {cosine}", pair.a, pair.b);
        }
    }

    #[test]
    fn a_missing_model_directory_is_named_with_the_fix() {
        let err = BertEmbedder::load(Path::new("/nonexistent/model"), 8).err().expect("fails");
        let text = format!("{err:#}");
        assert!(text.contains("/nonexistent/model/config.json"), "{text}");
        assert!(text.contains("fetch-model"), "{text}");
    }
}
