//! One exporter per `--format`: each turns the run's header, every record and the trailer into
//! bytes.

use std::io;

use super::{Cell, Exporter, Record};

/// A JSON document: the header's fields, then `"results": [...]` (or the record's own
/// [`Record::ARRAY`] name), streamed record by record so
/// that memory does not grow with the number of images.
#[derive(Default)]
pub(super) struct JsonExporter {
    count: usize,
}

impl<R: Record> Exporter<R> for JsonExporter {
    fn begin(&mut self, header: &serde_json::Value) -> io::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(header)?;
        // Reopen the header object to append the results array.
        match bytes.pop() {
            Some(b'}') if bytes.len() > 1 => bytes.push(b','),
            Some(b'}') => {}
            _ => return Err(io::Error::other("the JSON header must be an object")),
        }
        serde_json::to_writer(&mut bytes, R::ARRAY)?;
        bytes.extend_from_slice(b":[");
        Ok(bytes)
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut bytes = if self.count == 0 {
            b"\n".to_vec()
        } else {
            b",\n".to_vec()
        };
        self.count += 1;
        serde_json::to_writer(&mut bytes, result)?;
        Ok(bytes)
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(b"\n]}\n".to_vec())
    }
}

/// One JSON object per line, the same object as in the JSON document's `results`; with `run`, each
/// ends with `"run": "<fingerprint>"` (see [`super::resume`]).
pub(super) struct JsonlExporter {
    pub(super) run: Option<String>,
}

impl<R: Record> Exporter<R> for JsonlExporter {
    fn begin(&mut self, _: &serde_json::Value) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(result)?;
        if let Some(run) = &self.run {
            // Records are objects: `}` reopened for one more field.
            if bytes.last() == Some(&b'}') {
                bytes.pop();
                bytes.extend_from_slice(b",\"run\":");
                serde_json::to_writer(&mut bytes, run)?;
                bytes.push(b'}');
            }
        }
        bytes.push(b'\n');
        Ok(bytes)
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

/// RFC 4180 CSV with a header row; the rows are the record's own.
pub(super) struct CsvExporter;

impl<R: Record> Exporter<R> for CsvExporter {
    fn begin(&mut self, _: &serde_json::Value) -> io::Result<Vec<u8>> {
        Ok(format!("{}\n", R::COLUMNS.join(",")).into_bytes())
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut out = String::new();
        for row in result.rows() {
            let cells: Vec<String> = row.iter().map(Cell::csv).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        Ok(out.into_bytes())
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

/// For people: each image's path, then its results, wrapped to `width` when on a terminal.
pub(super) struct TableExporter {
    pub(super) width: Option<usize>,
}

impl<R: Record> Exporter<R> for TableExporter {
    fn begin(&mut self, header: &serde_json::Value) -> io::Result<Vec<u8>> {
        let mut out = String::new();
        R::table_preamble(header, &mut out, self.width);
        Ok(out.into_bytes())
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut out = String::new();
        result.table(&mut out, self.width);
        Ok(out.into_bytes())
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}
