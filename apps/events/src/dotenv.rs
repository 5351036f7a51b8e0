//! A `.env` loader for the original Flask service's files, which write `WAIT_SECONDS = '5'` (spaces around `=`,
//! quoted values) and leave unused settings empty (`INPUT_FILE_LOCATION = ''`). Small enough to
//! write here rather than bend a general loader to those files.

use std::path::Path;

/// Pairs of a `.env` text: `KEY=VALUE`, `KEY = 'VALUE'`, `export KEY="VALUE"`, `# comments`.
///
/// ```
/// let pairs = switchyard_events::dotenv::parse("WAIT_SECONDS = '5'\n# note\nexport ENDPOINT=\"http://x\"\nINPUT_FILE_LOCATION = ''\n");
/// assert_eq!(pairs, vec![("WAIT_SECONDS".into(), "5".into()), ("ENDPOINT".into(), "http://x".into()), ("INPUT_FILE_LOCATION".into(), "".into())]);
/// ```
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let key = k.trim();
        let mut value = v.trim();
        for q in ['\'', '"'] {
            if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                value = &value[1..value.len() - 1];
            }
        }
        if !key.is_empty() {
            out.push((key.to_string(), value.to_string()));
        }
    }
    out
}

/// Sets each pair of `path` that the environment does not set already (the environment wins,
/// as with every `.env` loader). Empty values are skipped: the original uses them to mean "default".
pub fn load(path: &Path) -> std::io::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut set = 0;
    for (k, v) in parse(&text) {
        if !v.is_empty() && std::env::var_os(&k).is_none() {
            // Called once at start-up, before any thread reads the environment.
            std::env::set_var(k, v);
            set += 1;
        }
    }
    Ok(set)
}
