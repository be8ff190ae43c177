//! How the operators' CLI prints an answer: the API's JSON with `--json`,
//! otherwise a table or a few lines for people; the cell helpers the
//! command groups share.

use serde_json::Value;

/// Prints `answer` as pretty JSON when `as_json`, else as `people` words it.
pub(super) fn answer(
    answer: &Value,
    as_json: bool,
    people: impl FnOnce(&Value),
) -> anyhow::Result<()> {
    if as_json {
        return print_json(answer);
    }
    people(answer);
    Ok(())
}

/// Prints `value` as pretty JSON.
pub(super) fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The `items` of a list answer.
pub(super) fn items(answer: &Value) -> &[Value] {
    answer["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Where a paged list goes on, if it does: `more: --after NAME`.
pub(super) fn more(answer: &Value) {
    if let Some(next) = answer["next"].as_str() {
        println!("more: --after {next}");
    }
}

/// A value as a table cell: strings bare, nothing as `-`.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A flag as a table cell: `yes`, `no` or `-`.
pub(super) fn yes_no(value: Option<bool>) -> String {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
    .into()
}

/// `ops.alice` for a sub-user, `alice` for a customer.
pub(super) fn full_name(account: &Value) -> String {
    match account["customer"].as_str() {
        Some(customer) => format!("{}.{customer}", text(&account["name"])),
        None => text(&account["name"]),
    }
}

/// The limits set, as `key=value` pairs.
pub(super) fn limits_summary(limits: &Value) -> String {
    let Some(limits) = limits.as_object() else {
        return "-".into();
    };
    let set: Vec<String> = limits
        .iter()
        .filter(|(_, value)| !value.is_null() && value.as_array().is_none_or(|a| !a.is_empty()))
        .map(|(key, value)| match value {
            Value::Array(items) => format!(
                "{key}={}",
                items.iter().map(text).collect::<Vec<_>>().join(",")
            ),
            other => format!("{key}={}", text(other)),
        })
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(" ")
    }
}

/// An account's name, state, limits and times, one per line.
pub(super) fn print_account(account: &Value) {
    println!("name: {}", full_name(account));
    println!("enabled: {}", yes_no(account["enabled"].as_bool()));
    println!("limits: {}", limits_summary(&account["limits"]));
    println!("created: {}", text(&account["created_at"]));
    println!("updated: {}", text(&account["updated_at"]));
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|title| (*title).to_owned()).collect());
    for row in rows {
        line(row);
    }
}
