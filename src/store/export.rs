//! History export as CSV or JSON lines, streamed page by page so that any size of export runs in constant
//! memory.

use std::io::Write;

use sqlx::SqlitePool;

use super::StoreError;
use super::history::{self, HistoryQuery, Order, PayloadView, StoredMessage};
use crate::timefmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `id,time,topic,qos,retain,client_id,username,payload` with RFC 4180 quoting.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes every message matching `query` (oldest first) to `out`; `progress` is called with the running count
/// after each page. Returns the number written.
pub async fn export(
    pool: &SqlitePool,
    query: &HistoryQuery,
    format: Format,
    view: PayloadView,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, ExportError> {
    let mut q = query.clone();
    q.order = Order::OldestFirst;
    q.limit = 1000;
    let mut written = 0u64;
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    loop {
        let page = history::query(pool, &q).await?;
        write_messages(out, &page.messages, format, view)?;
        written += page.messages.len() as u64;
        progress(written);
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    out.flush()?;
    Ok(written)
}

/// The first line of a CSV export.
pub const CSV_HEADER: &str = "id,time,topic,qos,retain,client_id,username,payload";

/// Messages in the export format, one line each (for exports streamed by their caller, such as the console).
pub fn write_messages(
    out: &mut impl Write,
    messages: &[StoredMessage],
    format: Format,
    view: PayloadView,
) -> std::io::Result<()> {
    for m in messages {
        match format {
            Format::Csv => write_csv(out, m, view)?,
            Format::Jsonl => {
                serde_json::to_writer(&mut *out, &json(m, view)).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

/// A message as JSON, with its time as RFC 3339 and its payload in the chosen view.
pub fn json(m: &StoredMessage, view: PayloadView) -> serde_json::Value {
    let mut value = serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("time".into(), timefmt::format(m.ts).into());
        map.insert("payload".into(), m.payload_as(view));
        if let Some(c) = &m.correlation_data {
            map.insert("correlation_data".into(), history::hex(c).into());
        }
    }
    value
}

fn write_csv(out: &mut impl Write, m: &StoredMessage, view: PayloadView) -> std::io::Result<()> {
    let payload = match m.payload_as(view) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    let fields = [
        m.id.to_string(),
        timefmt::format(m.ts),
        m.topic.clone(),
        m.qos.to_string(),
        u8::from(m.retain).to_string(),
        m.client_id.clone().unwrap_or_default(),
        m.username.clone().unwrap_or_default(),
        payload,
    ];
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    writeln!(out, "{}", line.join(","))
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }
}
