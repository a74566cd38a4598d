//! Plain-text tables that fit the terminal: columns as wide as their widest cell, and one
//! flexible column cut in the middle (`cnn-2…201400`) when the table is wider than the screen.

use flora::evaluate::plot::shorten;

/// A column's header and alignment.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub header: &'static str,
    pub right: bool,
}

/// A left-aligned column.
pub const fn left(header: &'static str) -> Col {
    Col {
        header,
        right: false,
    }
}

/// A right-aligned column (numbers).
pub const fn right(header: &'static str) -> Col {
    Col {
        header,
        right: true,
    }
}

/// The width to fit: `COLUMNS` when set, else the terminal's when stdout is one, else 80.
pub fn screen_width() -> usize {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
    {
        return n.max(40);
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; on failure it is left zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col >= 40 {
        ws.ws_col as usize
    } else {
        80
    }
}

/// Renders `rows` under `cols`, one space between columns (two before a left-aligned column
/// that follows a right-aligned one), shrinking column `flex` (down to `min_flex` characters)
/// so that lines fit `width`. The header line is left out when every header is empty.
pub fn render(
    cols: &[Col],
    rows: &[Vec<String>],
    flex: Option<usize>,
    min_flex: usize,
    width: usize,
) -> String {
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = cols.iter().map(|c| len(c.header)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(len(cell));
        }
    }
    let seps: Vec<usize> = (0..cols.len())
        .map(|i| match i {
            0 => 0,
            _ if cols[i - 1].right && !cols[i].right => 2,
            _ => 1,
        })
        .collect();
    let total: usize = widths.iter().sum::<usize>() + seps.iter().sum::<usize>();
    if let Some(f) = flex
        && total > width
    {
        let floor = min_flex.max(len(cols[f].header));
        widths[f] = widths[f].saturating_sub(total - width).max(floor);
    }
    let mut out = String::new();
    let header: Vec<String> = cols.iter().map(|c| c.header.to_string()).collect();
    // Columns with no header at all: no header line.
    let header = cols.iter().any(|c| !c.header.is_empty()).then_some(&header);
    for row in header.into_iter().chain(rows) {
        let mut line = String::new();
        for (i, col) in cols.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let cell = shorten(cell, widths[i]);
            line.push_str(&" ".repeat(seps[i]));
            let pad = " ".repeat(widths[i].saturating_sub(len(&cell)));
            if col.right {
                line.push_str(&pad);
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flexible_column_shrinks_to_fit() {
        let cols = [left("name"), right("n"), left("x")];
        let rows = vec![vec![
            "a-very-long-run-name-2026".to_string(),
            "12".into(),
            "ok".into(),
        ]];
        let text = render(&cols, &rows, Some(0), 6, 20);
        assert!(text.lines().all(|l| l.chars().count() <= 20), "{text}");
        assert!(text.contains("a-very…e-2026"), "{text}");
        let wide = render(&cols, &rows, Some(0), 6, 200);
        assert!(wide.contains("a-very-long-run-name-2026"), "{wide}");
    }
}
