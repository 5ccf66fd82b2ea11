//! A host function: Python plugins call back into Rust with `from host import ...`.
//! Run: `cargo run --example host_function`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const PLUGIN: &str = r#"
from host import exchange_rate, log, HostError

def convert(amount, currency):
    try:
        rate = exchange_rate(currency)
    except HostError as e:
        log('cannot convert %s: %s' % (currency, e))
        return None
    return round(amount * rate, 2)
"#;

fn main() -> Result<(), procpy::Error> {
    procpy::init();

    let rates: HashMap<String, f64> = [("USD", 0.92), ("GBP", 1.17), ("CHF", 1.04)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let lookups = Arc::new(AtomicUsize::new(0));
    let counter = lookups.clone();

    let engine = procpy::Builder::new()
        .workers(2)
        // Typed through serde: a str argument, a float result; Err becomes host.HostError.
        .host_fn("exchange_rate", move |currency: String| {
            counter.fetch_add(1, Ordering::Relaxed);
            rates.get(&currency).copied().ok_or_else(|| format!("no rate for {currency}"))
        })
        .host_fn("log", |msg: String| {
            eprintln!("[plugin] {msg}");
            Ok::<_, String>(())
        })
        .source("plugin", PLUGIN)
        .build()?;

    for (amount, currency) in [(100.0, "USD"), (20.0, "GBP"), (5.0, "JPY")] {
        let eur: Option<f64> = engine.call("plugin:convert", (amount, currency))?;
        match eur {
            Some(v) => println!("{amount} {currency} = {v} EUR"),
            None => println!("{amount} {currency}: no conversion"),
        }
    }
    println!("the host answered {} exchange_rate calls", lookups.load(Ordering::Relaxed));
    Ok(())
}
