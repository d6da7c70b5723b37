//! How a product's output is cut into tasks for the threads ([`grid`]), and running them with
//! the epilogue on each task's rectangle ([`run_grid`]).

use super::Epilogue;

/// The output pointer, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: only used by tasks and jobs that write disjoint parts of the buffer (`forward_threads`,
// `Unpacked::forward_parts`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    // A method (not field access) so closures capture the whole Send + Sync wrapper.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// How a `rows × panels` output (panels of 32 or 48 columns) is cut into tasks: `row_tasks` blocks of `row_step` rows
/// (the last may be shorter) × `col_tasks` blocks of `panel_step` panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grid {
    pub(super) row_step: usize,
    pub(super) row_tasks: usize,
    pub(super) panel_step: usize,
    pub(super) col_tasks: usize,
}

/// Cuts the output into about `threads` (or a multiple of it) tasks: row blocks of at most
/// `max_rows` rows (so a task's converted input stays in L2), in multiples of `unit` rows (the
/// microkernel's height); when there are fewer row blocks than threads, the columns are split too.
pub(super) fn grid(
    rows: usize,
    panels: usize,
    threads: usize,
    unit: usize,
    max_rows: usize,
) -> Grid {
    let threads = threads.max(1);
    let unit = unit.max(1);
    let units = rows.div_ceil(unit);
    let max_units = (max_rows / unit).max(1);
    let mut row_tasks = units.div_ceil(max_units);
    if row_tasks >= threads {
        // Round up to a multiple of the thread count, for balance.
        row_tasks = row_tasks.div_ceil(threads) * threads;
    }
    let row_tasks = row_tasks.min(units);
    let row_step = units.div_ceil(row_tasks) * unit;
    let row_tasks = rows.div_ceil(row_step);
    let col_tasks = if row_tasks >= threads {
        1
    } else {
        threads.div_ceil(row_tasks).min(panels)
    };
    let panel_step = panels.div_ceil(col_tasks);
    Grid {
        row_step,
        row_tasks,
        panel_step,
        col_tasks: panels.div_ceil(panel_step),
    }
}

impl Grid {
    pub(super) fn tasks(&self) -> usize {
        self.row_tasks * self.col_tasks
    }

    /// Task `t`'s rows `r0..r1` and panels `p0..p1`.
    pub(super) fn task(
        &self,
        t: usize,
        rows: usize,
        panels: usize,
    ) -> (usize, usize, usize, usize) {
        let (rt, ct) = (t / self.col_tasks, t % self.col_tasks);
        let r0 = rt * self.row_step;
        let p0 = ct * self.panel_step;
        (
            r0,
            (r0 + self.row_step).min(rows),
            p0,
            (p0 + self.panel_step).min(panels),
        )
    }
}

/// Runs `task` on each rectangle of `g` (rows × panels of `width` columns of the `rows × n`
/// output), in parallel when there are several, each followed by `epilogue` on its rectangle
/// while it is hot.
///
/// # Safety
/// `out` must hold `rows × n` values (an `Add` epilogue's residual as many), and `task(out, (r0,
/// r1), (p0, p1))` must write only rows `r0..r1` × columns `width·p0..min(width·p1, n)` of the
/// output at `out` (then no two tasks touch the same element).
pub(super) unsafe fn run_grid(
    out: &mut [f32],
    (rows, n): (usize, usize),
    g: Grid,
    width: usize,
    epilogue: Epilogue,
    task: &(dyn Fn(*mut f32, (usize, usize), (usize, usize)) + Sync),
) {
    let panels = n.div_ceil(width);
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |t: usize| {
        let (r0, r1, p0, p1) = g.task(t, rows, panels);
        task(ptr.get(), (r0, r1), (p0, p1));
        if matches!(epilogue, Epilogue::None) {
            return;
        }
        let (c0, c1) = (p0 * width, (p1 * width).min(n));
        for r in r0..r1 {
            // SAFETY: row r, columns c0..c1 lie inside `out` (r < rows, c1 <= n) and inside this
            // task's rectangle, which no other task touches (the grid's rectangles are
            // disjoint); the task's writes to it are finished.
            let run = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r * n + c0), c1 - c0) };
            epilogue.apply(run, r, c0, n);
        }
    };
    if g.tasks() == 1 {
        run(0);
    } else {
        use rayon::prelude::*;
        (0..g.tasks()).into_par_iter().for_each(run);
    }
}
