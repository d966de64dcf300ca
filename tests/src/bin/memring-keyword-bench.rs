//! memring's own BM25 index (shard-node/src/keyword.rs) against tantivy, in one process, on the
//! same corpus and queries: what `docs/keyword-index.md` decides between them on.
//!
//! `scripts/bm25-overlap.py` (`make bench-bm25`) writes its corpus to a JSON file
//! (`{"texts": [...], "queries": [["word", ...], ...]}`) and runs this with `--corpus`, so bm25s,
//! memring over HTTP, memring in-process and tantivy all see the same memories and questions.
//! Prints Markdown rows. Built only with the `tantivy-peer` feature (tantivy is not a dependency
//! of anything memring ships).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use memring_shard::keyword::KeywordIndex;
use serde::Deserialize;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, Schema, TEXT};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, Term, doc};

#[derive(Parser)]
#[command(about = "memring's keyword index against tantivy on one corpus")]
struct Args {
    /// The corpus: {"texts": [...], "queries": [[words...], ...]}.
    #[arg(long)]
    corpus: PathBuf,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Single writes timed for write-to-visible.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Small partitions created to measure what an index costs at rest.
    #[arg(long, default_value_t = 1000)]
    partitions: usize,
}

#[derive(Deserialize)]
struct Corpus {
    texts: Vec<String>,
    queries: Vec<Vec<String>>,
}

/// A tantivy index shaped like one partition: a `u64` label and the content.
struct Tantivy {
    label: Field,
    body: Field,
    index: Index,
    writer: IndexWriter,
    reader: IndexReader,
}

impl Tantivy {
    fn new() -> Result<Self> {
        let mut schema = Schema::builder();
        let label = schema.add_u64_field("label", FAST | INDEXED);
        let body = schema.add_text_field("body", TEXT);
        let index = Index::create_in_ram(schema.build());
        // One indexing thread and tantivy's smallest arena (15 MB): the least a writer can be.
        let writer = index.writer_with_num_threads(1, 15_000_000)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Self { label, body, index, writer, reader })
    }

    fn add(&mut self, label: u64, text: &str) -> Result<()> {
        self.writer.add_document(doc!(self.label => label, self.body => text))?;
        Ok(())
    }

    /// Makes what was added searchable: a commit, then a reader reload.
    fn publish(&mut self) -> Result<()> {
        self.writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    fn search(&self, searcher: &Searcher, words: &[String], k: usize) -> Result<Vec<(u64, f32)>> {
        let clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| {
                let term = Term::from_field_text(self.body, w);
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Should, query)
            })
            .collect();
        let top = searcher
            .search(&BooleanQuery::new(clauses), &TopDocs::with_limit(k).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let labels = searcher.segment_reader(address.segment_ord).fast_fields().u64("label")?;
            let label = labels.first(address.doc_id).context("a hit without a label")?;
            hits.push((label, score));
        }
        Ok(hits)
    }
}

/// The value at quantile `q` of `xs` (sorted in place).
fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((q * xs.len() as f64) as usize).min(xs.len() - 1)]
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm without rss")?.parse()?;
    Ok(pages * 4096)
}

/// Threads of this process, from /proc (Linux).
fn threads() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let corpus: Corpus = serde_json::from_slice(&std::fs::read(&args.corpus)?)?;
    let (texts, queries, k) = (&corpus.texts, &corpus.queries, args.k);

    // Bulk indexing.
    let started = Instant::now();
    let mut ours = KeywordIndex::default();
    for (label, text) in texts.iter().enumerate() {
        ours.insert(label as u64, text);
    }
    let ours_build = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut theirs = Tantivy::new()?;
    for (label, text) in texts.iter().enumerate() {
        theirs.add(label as u64, text)?;
    }
    theirs.publish()?;
    let theirs_build = started.elapsed().as_secs_f64();

    // Queries: latency and agreement.
    let (mut ours_ms, mut theirs_ms, mut overlaps) = (Vec::new(), Vec::new(), Vec::new());
    let searcher = theirs.reader.searcher();
    for words in queries {
        let query = words.join(" ");
        let started = Instant::now();
        let a = ours.search(&query, k, None);
        ours_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let b = theirs.search(&searcher, words, k)?;
        theirs_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let denominator = a.len().max(b.len());
        if denominator == 0 {
            overlaps.push(1.0);
            continue;
        }
        let a: HashSet<u64> = a.iter().map(|h| h.0).collect();
        overlaps.push(b.iter().filter(|h| a.contains(&h.0)).count() as f64 / denominator as f64);
    }
    drop(searcher);
    let overlap = overlaps.iter().sum::<f64>() / overlaps.len().max(1) as f64;

    // Write to visible: one memory written, then a query that must find it.
    let (mut ours_write, mut theirs_write) = (Vec::new(), Vec::new());
    for i in 0..args.writes {
        let label = (texts.len() + i) as u64;
        let text = format!("{} uniqueword{i}", texts[i % texts.len()]);
        let probe = format!("uniqueword{i}");
        let started = Instant::now();
        ours.insert(label, &text);
        let found = ours.search(&probe, 1, None);
        ours_write.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(found.first().map(|h| h.0) == Some(label), "ours missed write {i}");
        let started = Instant::now();
        theirs.add(label, &text)?;
        theirs.publish()?;
        let found = theirs.search(&theirs.reader.searcher(), &[probe], 1)?;
        theirs_write.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(found.first().map(|h| h.0) == Some(label), "tantivy missed write {i}");
    }
    let segments = theirs.index.searchable_segment_ids()?.len();
    drop(theirs);
    drop(ours);

    // What many small partitions cost at rest: ten memories each, searchable.
    let (rss0, threads0) = (rss_bytes()?, threads()?);
    let mut small_ours = Vec::with_capacity(args.partitions);
    for p in 0..args.partitions {
        let mut index = KeywordIndex::default();
        for d in 0..10 {
            index.insert(d, &texts[(p * 10 + d as usize) % texts.len()]);
        }
        small_ours.push(index);
    }
    let ours_rest = rss_bytes()?.saturating_sub(rss0);
    drop(small_ours);
    let rss1 = rss_bytes()?;
    let mut small_theirs = Vec::with_capacity(args.partitions);
    for p in 0..args.partitions {
        let mut index = Tantivy::new()?;
        for d in 0..10 {
            index.add(d, &texts[(p * 10 + d as usize) % texts.len()])?;
        }
        index.publish()?;
        small_theirs.push(index);
    }
    let theirs_rest = rss_bytes()?.saturating_sub(rss1);
    let theirs_threads = threads()? - threads0;

    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let n = args.partitions;
    println!("| measure | memring's index | tantivy |");
    println!("|---|---|---|");
    println!(
        "| index {} memories (in-process, one thread) | {:.2} s | {:.2} s (one commit) |",
        texts.len(),
        ours_build,
        theirs_build
    );
    println!(
        "| {} queries, top {k}, p50 / p99 | {:.3} / {:.3} ms | {:.3} / {:.3} ms |",
        queries.len(),
        quantile(&mut ours_ms, 0.5),
        quantile(&mut ours_ms, 0.99),
        quantile(&mut theirs_ms, 0.5),
        quantile(&mut theirs_ms, 0.99)
    );
    println!("| mean top-{k} overlap between the two | {overlap:.4} | |");
    println!(
        "| one write until a query finds it, p50 / p99 ({} writes) | {:.3} / {:.3} ms | {:.3} / {:.3} ms (commit + reload; {segments} segments after) |",
        args.writes,
        quantile(&mut ours_write, 0.5),
        quantile(&mut ours_write, 0.99),
        quantile(&mut theirs_write, 0.5),
        quantile(&mut theirs_write, 0.99)
    );
    println!(
        "| {n} partitions of 10 memories, searchable and writable: memory | {:.1} MiB | {:.1} MiB |",
        mb(ours_rest),
        mb(theirs_rest)
    );
    println!("| the same: threads | 0 | {theirs_threads} |");
    Ok(())
}
