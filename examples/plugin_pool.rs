//! A Python plugin function over 10,000 records in a pool of worker processes, collecting typed
//! results. Run: `cargo run --example plugin_pool`.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The plugin a user of our service wrote: scores an order.
const PLUGIN: &str = r#"
def score(order):
    total = sum(line['qty'] * line['price'] for line in order['lines'])
    risky = order['country'] not in ('DE', 'FR', 'NL')
    return {'id': order['id'], 'total': round(total, 2), 'flag': 'review' if risky and total > 500 else None}
"#;

#[derive(Serialize)]
struct Line {
    qty: u32,
    price: f64,
}

#[derive(Serialize)]
struct Order {
    id: u64,
    country: &'static str,
    lines: Vec<Line>,
}

#[derive(Deserialize, Debug)]
struct Score {
    id: u64,
    total: f64,
    flag: Option<String>,
}

fn main() -> Result<(), procpy::Error> {
    // Workers are this same program started again: they must stop here.
    procpy::init();

    let countries = ["DE", "FR", "US", "NL", "BR"];
    let orders: Vec<Order> = (0..10_000u64)
        .map(|id| Order {
            id,
            country: countries[(id % 5) as usize],
            lines: (0..(id % 4 + 1))
                .map(|j| Line { qty: (j + 1) as u32, price: 50.0 + (id % 100) as f64 })
                .collect(),
        })
        .collect();

    let engine = procpy::Builder::new().workers(4).source("plugin", PLUGIN).build()?;
    let start = Instant::now();
    let scores: Vec<Score> = engine.map("plugin:score", &orders)?;
    let took = start.elapsed();

    assert_eq!(scores.len(), orders.len());
    assert!(scores.iter().enumerate().all(|(i, s)| s.id == i as u64), "results come back in order");
    let flagged = scores.iter().filter(|s| s.flag.is_some()).count();
    let revenue: f64 = scores.iter().map(|s| s.total).sum();
    println!("scored {} orders in {:.0?} on {} workers: {flagged} flagged for review, revenue {revenue:.2}", scores.len(), took, engine.workers());
    println!("first: {:?}", scores[0]);
    Ok(())
}
