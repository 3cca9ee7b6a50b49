//! Reading (and following) the parts' log files as one stream of lines.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;

use crate::runner::{LogLine, LogStream};

/// How often a followed file is looked at for new output.
const POLL: Duration = Duration::from_millis(200);

struct Tail {
    part: String,
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Reads what was appended since the last call; returns complete lines.
    fn read_new(&mut self) -> Vec<LogLine> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated or replaced: start again from the top.
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            lines.push(LogLine {
                part: self.part.clone(),
                line: String::from_utf8_lossy(&line[..line.len() - 1])
                    .trim_end_matches('\r')
                    .to_string(),
            });
        }
        lines
    }

    /// A last line without a newline, when not following.
    fn rest(&mut self) -> Option<LogLine> {
        if self.partial.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.partial).to_string();
        self.partial.clear();
        Some(LogLine {
            part: self.part.clone(),
            line,
        })
    }
}

/// The lines of every `(part, file)`, file after file; with `follow`, then
/// every new line as it is written, until the stream is dropped.
pub fn stream(files: Vec<(String, PathBuf)>, follow: bool) -> LogStream {
    let mut tails: Vec<Tail> = files
        .into_iter()
        .map(|(part, path)| Tail {
            part,
            path,
            offset: 0,
            partial: Vec::new(),
        })
        .collect();
    let mut first: Vec<LogLine> = Vec::new();
    for t in &mut tails {
        first.extend(t.read_new());
        if !follow {
            first.extend(t.rest());
        }
    }
    let head = futures::stream::iter(first.into_iter().map(Ok));
    if !follow {
        return head.boxed();
    }
    let more = futures::stream::unfold(tails, |mut tails| async move {
        loop {
            let lines: Vec<LogLine> = tails.iter_mut().flat_map(Tail::read_new).collect();
            if !lines.is_empty() {
                return Some((futures::stream::iter(lines.into_iter().map(Ok)), tails));
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .flatten();
    head.chain(more).boxed()
}
