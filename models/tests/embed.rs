//! The embedding engine on the real all-MiniLM-L6-v2 (installed by
//! `scripts/fetch-models.sh minilm`).

use models::device::Device;
use models::embed::{Embedder, ModelFolder, PoolingMode};
use models::source::offline_models_dir;

fn minilm() -> Embedder {
    let dir = offline_models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/fetch-models.sh minilm",
        dir.display()
    );
    Embedder::load(&ModelFolder::Local(dir), &Device::Cpu).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn paraphrases_are_nearest_and_vectors_are_unit_length() {
    let model = minilm();
    assert_eq!(model.dimension(), 384);
    assert_eq!(
        model.max_tokens(),
        256,
        "sentence_bert_config.json's max_seq_length"
    );
    assert_eq!(model.pooling().mode, PoolingMode::Mean);
    assert!(model.pooling().normalize);
    let texts = [
        "A man is playing a guitar.",
        "Someone strums an acoustic guitar on stage.",
        "The stock market fell sharply today.",
        "Share prices dropped steeply this afternoon.",
        "How do I bake sourdough bread?",
    ];
    let mut calls = 0;
    let vectors = model.embed(&texts, |_| calls += 1).unwrap();
    assert_eq!(calls, 1, "five texts are one batch");
    for v in &vectors {
        let norm: f32 = v.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        assert!(!v.truncated);
    }
    let nearest = |i: usize| {
        (0..texts.len())
            .filter(|&j| j != i)
            .max_by(|&a, &b| {
                let (a, b) = (
                    cosine(&vectors[i].vector, &vectors[a].vector),
                    cosine(&vectors[i].vector, &vectors[b].vector),
                );
                a.total_cmp(&b)
            })
            .unwrap()
    };
    assert_eq!(nearest(0), 1);
    assert_eq!(nearest(2), 3);
    // The same text alone and in a batch with longer ones: padding changes nothing.
    let alone = model.embed(&texts[..1], |_| ()).unwrap();
    assert!(cosine(&alone[0].vector, &vectors[0].vector) > 0.9999);
}

#[test]
fn long_texts_are_cut_and_say_so_and_empty_ones_are_refused() {
    let model = minilm();
    let long = "word ".repeat(600);
    let out = model.embed(&[&long, "short"], |_| ()).unwrap();
    assert!(out[0].truncated);
    assert!(out[0].tokens > 256, "{}", out[0].tokens);
    assert!(!out[1].truncated);
    let error = model.embed(&["fine", "  "], |_| ()).unwrap_err();
    assert!(error.to_string().contains("text 1 is empty"), "{error}");
}

#[test]
fn vectors_match_sentence_transformers_on_the_same_weights() {
    // Kept output of scripts/embedding-reference.py (sentence-transformers on PyTorch).
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/minilm-reference.json")).unwrap();
    let model = minilm();
    assert_eq!(
        reference["max_seq_length"].as_u64(),
        Some(model.max_tokens() as u64)
    );
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let ours = model.embed(&sentences, |_| ()).unwrap();
    for (i, expected) in reference["vectors"].as_array().unwrap().iter().enumerate() {
        let expected: Vec<f32> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let similarity = cosine(&ours[i].vector, &expected);
        assert!(
            similarity >= 0.999,
            "sentence {i} ({:?}): cosine {similarity} with sentence-transformers",
            sentences[i]
        );
    }
    assert!(
        ours.last().unwrap().truncated,
        "the long one is cut, as there"
    );
}
