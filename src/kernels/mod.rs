//! CPU linear layers `y = x · Wᵀ + b` whose weights are packed once (at load, or for f32 when the
//! first batch comes) into the layout the matrix kernel reads, with the kernel chosen at run time
//! from what the CPU offers.
//!
//! [`PackedLinear`] works on plain slices; [`Linear`] wraps it for Candle tensors (and keeps Candle's
//! own matmul on other devices). Backends, by [`Precision`]:
//!
//! | precision | backend | needs | weights held as |
//! | --- | --- | --- | --- |
//! | `F32` | [`Backend::Avx512F32`]: AVX-512 FMA microkernel, 8 rows × 48 columns | `avx512f` | f32 panels |
//! | `F32` | [`Backend::Avx2F32`]: AVX2 FMA microkernel, 6 rows × 16 columns | `avx2`, `fma` | f32 panels |
//! | `Bf16` | [`Backend::AmxBf16`]: AMX tiles, `tdpbf16ps`, 32 × 32 per step | `amx-tile`, `amx-bf16` (CPUID), the kernel's permission (Linux `arch_prctl`), `avx512bf16` | bf16 pairs |
//! | `Bf16` | [`Backend::Avx512Bf16`]: `vdpbf16ps` microkernel, 14 × 32 | `avx512bf16`, `avx512bw` | bf16 pairs |
//! | either | [`Backend::Portable`]: the same order in plain Rust (`f32::mul_add`) | nothing | f32 panels |
//! | `Int8` | [`Backend::AmxInt8`]: AMX tiles, `tdpbusd`, 32 × 32 per step | `amx-tile`, `amx-int8`, the kernel's permission, AVX-512 | i8 in 4-k groups |
//! | `Int8` | [`Backend::Avx512Vnni`]: `vpdpbusd zmm`, 14 × 32 | `avx512vnni` (+ f/bw/vl) | the same |
//! | `Int8` | [`Backend::AvxVnni`]: `vpdpbusd ymm`, 6 × 16 | `avxvnni`, `avx2` | the same |
//! | `Int8` | [`Backend::Avx2Int8`]: `vpmaddwd` on i16, 3 × 16 | `avx2` | the same |
//! | `Int8` | [`Backend::PortableInt8`]: scalar Rust | nothing | the same |
//!
//! The f32 backends all sum in one order that depends on K alone (`f32.rs`), and the int8 ones
//! compute the same exact i32 sums: an output row is the same bits whatever rows share its call
//! (issue 24), and the same on every backend of the kind. f32 weights are used where they are
//! (packed a panel at a time as the product runs) until a batch is tall enough to pay for
//! packing them once ([`Linear::in_place`]).
//!
//! The int8 backends all compute the same exact i32 sums and share one epilogue, so they give the
//! same bits (see `int8.rs` for the quantization). Features are detected once ([`cpu`]);
//! `VLM_KERNELS=portable|avx2|avx-vnni|avx512|amx` caps what [`Backend::best`] and the elementwise
//! kernels choose, so one machine can run every path end to end.
//!
//! `Bf16` on a CPU without native bf16 arithmetic computes in f32 with the original weights (the best
//! f32 backend): converting would only cost time there and lose precision.
//!
//! Bf16 backends round the weights (once) and the activations (every call) to bf16 to nearest even
//! and accumulate in f32, so each output is within about 2⁻⁸ · Σₖ|xₖ·wₖ| of the exact product; f32
//! backends are within about 1e-6 of it (the tests pin both).
//!
//! Threads: the output is cut into row blocks × column blocks (see [`grid`]), run on Rayon's global
//! pool (the one Candle uses), as many tasks as threads or a multiple of it.

// Issue 21: every unsafe block argues its safety, every unsafe fn states its contract, and
// unsafe operations inside unsafe fns still need their own block.
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]

#[cfg(target_arch = "x86_64")]
mod amx;
pub(crate) mod attention;
mod buf;
pub mod cpu;
pub(crate) mod elementwise;
mod f32;
#[cfg(target_arch = "x86_64")]
mod f32_x86;
mod grid;
use grid::{grid, run_grid, OutPtr};
mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_x86;
mod stored;
pub(crate) use stored::layout_fingerprint;
#[cfg(target_arch = "x86_64")]
mod x86;

mod tensor;
pub(crate) use tensor::Linear;

/// Arithmetic a [`PackedLinear`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 inputs, weights and accumulation.
    F32,
    /// bf16 weights and activations, f32 accumulation, where the CPU multiplies bf16 natively;
    /// f32 elsewhere.
    Bf16,
    /// int8 weights (per output channel) and activations (per row, at run time), exact i32
    /// sums (see `int8.rs`).
    Int8,
}

impl Precision {
    /// The precision of the layers an int8 model keeps in f32 (the patch embedding, the
    /// projections: see `Precision::compute` in the engine); other precisions unchanged.
    pub(crate) fn unless_int8(self) -> Precision {
        match self {
            Precision::Int8 => Precision::F32,
            p => p,
        }
    }

    /// Whether layers of this precision are packed (converted, quantized) once at load on this
    /// CPU: bf16 where the CPU multiplies it natively, and int8. f32 multiplies the weights
    /// where they are until a batch is tall enough (see [`Linear::in_place`]).
    pub(crate) fn packs_at_load(self) -> bool {
        match self {
            Precision::F32 => false,
            Precision::Bf16 => Backend::native_bf16(),
            Precision::Int8 => true,
        }
    }
}

/// The kernel a [`PackedLinear`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// f32, AVX-512 FMA.
    Avx512F32,
    /// f32, AVX2 FMA.
    Avx2F32,
    /// bf16 with f32 accumulation on AMX tiles.
    AmxBf16,
    /// bf16 with f32 accumulation, AVX512-BF16 `vdpbf16ps`.
    Avx512Bf16,
    /// f32 in plain Rust, on any CPU (the f32 order every f32 backend follows).
    Portable,
    /// int8 on AMX tiles, `tdpbusd`.
    AmxInt8,
    /// int8, AVX512-VNNI `vpdpbusd`.
    Avx512Vnni,
    /// int8, AVX-VNNI (256-bit `vpdpbusd`).
    AvxVnni,
    /// int8, AVX2 `vpmaddwd`.
    Avx2Int8,
    /// int8, scalar Rust: the reference the others must equal, and the fallback anywhere.
    PortableInt8,
}

/// Every backend, for tests.
#[cfg(test)]
pub(crate) const BACKENDS: [Backend; 10] = [
    Backend::Avx512F32,
    Backend::Avx2F32,
    Backend::AmxBf16,
    Backend::Avx512Bf16,
    Backend::Portable,
    Backend::AmxInt8,
    Backend::Avx512Vnni,
    Backend::AvxVnni,
    Backend::Avx2Int8,
    Backend::PortableInt8,
];

impl Backend {
    /// Whether this CPU (and OS) can run the backend (features detected once, [`cpu::features`];
    /// `VLM_KERNELS` does not change it: it only caps [`Backend::best`]).
    pub fn is_available(self) -> bool {
        let f = cpu::features();
        match self {
            Backend::Portable | Backend::PortableInt8 => true,
            Backend::Avx512F32 => f.avx512f,
            Backend::Avx2F32 => f.avx2_fma,
            Backend::Avx512Bf16 => f.avx512_bf16,
            Backend::AmxBf16 => f.amx_bf16,
            Backend::AmxInt8 => f.amx_int8,
            Backend::Avx512Vnni => f.avx512_vnni,
            Backend::AvxVnni => f.avx_vnni,
            Backend::Avx2Int8 => f.avx2_fma,
        }
    }

    /// The instruction-set level the backend needs (what `VLM_KERNELS` caps).
    pub(crate) fn level(self) -> cpu::Level {
        match self {
            Backend::Portable | Backend::PortableInt8 => cpu::Level::Portable,
            Backend::Avx2Int8 | Backend::Avx2F32 => cpu::Level::Avx2,
            Backend::AvxVnni => cpu::Level::AvxVnni,
            Backend::Avx512F32 | Backend::Avx512Bf16 | Backend::Avx512Vnni => cpu::Level::Avx512,
            Backend::AmxBf16 | Backend::AmxInt8 => cpu::Level::Amx,
        }
    }

    /// The fastest backend for `precision` on this CPU, within `VLM_KERNELS`' cap.
    pub fn best(precision: Precision) -> Backend {
        let order: &[Backend] = match precision {
            Precision::F32 => &[Backend::Avx512F32, Backend::Avx2F32],
            Precision::Bf16 => &[
                Backend::AmxBf16,
                Backend::Avx512Bf16,
                Backend::Avx512F32,
                Backend::Avx2F32,
            ],
            Precision::Int8 => &[
                Backend::AmxInt8,
                Backend::Avx512Vnni,
                Backend::AvxVnni,
                Backend::Avx2Int8,
                Backend::PortableInt8,
            ],
        };
        order
            .iter()
            .copied()
            .find(|b| b.is_available() && cpu::allows(b.level()))
            .unwrap_or(Backend::Portable)
    }

    /// Whether this CPU has an int8 kernel faster than its f32 one (any x86 int8 backend; the
    /// scalar one is only a reference).
    pub fn native_int8() -> bool {
        Backend::best(Precision::Int8) != Backend::PortableInt8
    }

    /// Whether the backend computes in int8.
    pub(crate) fn is_int8(self) -> bool {
        matches!(
            self,
            Backend::AmxInt8
                | Backend::Avx512Vnni
                | Backend::AvxVnni
                | Backend::Avx2Int8
                | Backend::PortableInt8
        )
    }

    /// Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16): the one case where the
    /// `Bf16` precision is not computed in f32.
    pub(crate) fn native_bf16() -> bool {
        Backend::best(Precision::Bf16).is_bf16()
    }

    /// Whether the backend rounds inputs to bf16.
    pub(crate) fn is_bf16(self) -> bool {
        matches!(self, Backend::AmxBf16 | Backend::Avx512Bf16)
    }
}

/// Errors of [`PackedLinear::new`] and [`PackedLinear::forward`]: lengths that do not match the
/// stated shape, or a backend this CPU lacks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("{what} has {got} values, expected {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("backend {0:?} is not available on this CPU")]
    Unavailable(Backend),
    #[error("a linear layer needs in and out features > 0 (got in {in_dim}, out {out_dim})")]
    Empty { in_dim: usize, out_dim: usize },
    #[error("an int8 layer takes at most {max} input features (got {in_dim})")]
    TooWideForInt8 { in_dim: usize, max: usize },
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            got,
            expected,
        })
    }
}

/// Work done on each block of the output right after the kernel wrote it, while it is still in
/// cache: what would otherwise be one more pass over the whole output (an activation after `fc1`,
/// the residual add after `out_proj` and `fc2`).
#[derive(Clone, Copy, Default)]
pub enum Epilogue<'a> {
    /// `out = x · Wᵀ + b`.
    #[default]
    None,
    /// `out = f(x · Wᵀ + b)`: `f` is called on runs of consecutive values of one output row (a
    /// block's part of it), and must treat each value on its own.
    Map(&'a (dyn Fn(&mut [f32]) + Sync)),
    /// `out = x · Wᵀ + b + residual`, `residual` shaped like `out`.
    Add(&'a [f32]),
}

impl std::fmt::Debug for Epilogue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Epilogue::None => "None",
            Epilogue::Map(_) => "Map",
            Epilogue::Add(_) => "Add",
        })
    }
}

impl Epilogue<'_> {
    /// Applies the epilogue to `run`, the values of output row `row` from column `col` on.
    fn apply(&self, run: &mut [f32], row: usize, col: usize, out_dim: usize) {
        match self {
            Epilogue::None => {}
            Epilogue::Map(f) => f(run),
            Epilogue::Add(residual) => {
                let start = row * out_dim + col;
                let len = run.len();
                for (o, r) in run.iter_mut().zip(&residual[start..start + len]) {
                    *o += r;
                }
            }
        }
    }
}

/// Weights in the layout of one backend.
enum Packed {
    F32 {
        backend: Backend,
        weight: f32::PackedF32,
        /// `bias`, zero-padded to whole panels (zeros without a bias).
        bias: Vec<f32>,
    },
    #[cfg(target_arch = "x86_64")]
    Bf16 {
        backend: Backend,
        weight: x86::PackedBf16,
        /// As for f32.
        bias: Vec<f32>,
    },
    Int8 {
        backend: Backend,
        weight: int8::PackedInt8,
    },
}

/// A linear layer `y = x · Wᵀ + b` with its weights packed for the chosen backend.
pub struct PackedLinear {
    in_dim: usize,
    out_dim: usize,
    packed: Packed,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("in_dim", &self.in_dim)
            .field("out_dim", &self.out_dim)
            .field("backend", &self.backend())
            .finish()
    }
}

impl PackedLinear {
    /// Packs `weight` (`out_dim × in_dim`, row-major, as PyTorch's `nn.Linear.weight`) and `bias`
    /// (`out_dim`) for the fastest backend of `precision` on this CPU.
    #[cfg(test)]
    pub(crate) fn new(
        weight: &[f32],
        bias: Option<&[f32]>,
        out_dim: usize,
        in_dim: usize,
        precision: Precision,
    ) -> Result<Self, KernelError> {
        Self::with_backend(weight, bias, out_dim, in_dim, Backend::best(precision))
    }

    /// As [`PackedLinear::new`], for a given backend (an error if this CPU lacks it).
    pub fn with_backend(
        weight: &[f32],
        bias: Option<&[f32]>,
        out_dim: usize,
        in_dim: usize,
        backend: Backend,
    ) -> Result<Self, KernelError> {
        Self::from_parts(&[weight], bias, out_dim, in_dim, backend)
    }

    /// As [`PackedLinear::with_backend`], for the weight made of `parts` stacked (whole rows of
    /// `in_dim` values each; q, k and v packed as one layer without copying them into one first).
    pub(crate) fn from_parts(
        parts: &[&[f32]],
        bias: Option<&[f32]>,
        out_dim: usize,
        in_dim: usize,
        backend: Backend,
    ) -> Result<Self, KernelError> {
        if in_dim == 0 || out_dim == 0 {
            return Err(KernelError::Empty { in_dim, out_dim });
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        check_len("weight", total, out_dim.saturating_mul(in_dim))?;
        if let Some(p) = parts.iter().find(|p| p.len() % in_dim != 0) {
            return Err(KernelError::Length {
                what: "weight part",
                got: p.len(),
                expected: p.len().next_multiple_of(in_dim),
            });
        }
        if let Some(b) = bias {
            check_len("bias", b.len(), out_dim)?;
        }
        if !backend.is_available() {
            return Err(KernelError::Unavailable(backend));
        }
        if backend.is_int8() && in_dim > int8::MAX_K {
            return Err(KernelError::TooWideForInt8 {
                in_dim,
                max: int8::MAX_K,
            });
        }
        let packed = match backend {
            b if b.is_int8() => Packed::Int8 {
                backend,
                weight: int8::PackedInt8::new(parts, bias, out_dim, in_dim),
            },
            #[cfg(target_arch = "x86_64")]
            b if b.is_bf16() => Packed::Bf16 {
                backend,
                weight: x86::PackedBf16::new(parts, out_dim, in_dim),
                bias: padded_bias(bias, out_dim, x86::NR),
            },
            _ => Packed::F32 {
                backend,
                weight: f32::PackedF32::new(parts, out_dim, in_dim),
                bias: padded_bias(bias, out_dim, f32::NRF),
            },
        };
        Ok(Self {
            in_dim,
            out_dim,
            packed,
        })
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub(crate) fn backend(&self) -> Backend {
        match &self.packed {
            Packed::F32 { backend, .. } | Packed::Int8 { backend, .. } => *backend,
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16 { backend, .. } => *backend,
        }
    }

    /// `out = x · Wᵀ + b` for `rows` rows: `x` is `rows × in_dim`, `out` is `rows × out_dim`, both
    /// row-major. Uses Rayon's global pool.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.forward_threads(x, rows, out, Epilogue::None, rayon::current_num_threads())
    }

    /// [`PackedLinear::forward`], then `epilogue` on each block of the output while it is hot.
    pub(crate) fn forward_with(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        epilogue: Epilogue,
    ) -> Result<(), KernelError> {
        self.forward_threads(x, rows, out, epilogue, rayon::current_num_threads())
    }

    /// [`PackedLinear::forward`] cut into tasks for `threads` threads (tests use it to exercise
    /// every split).
    fn forward_threads(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        epilogue: Epilogue,
        threads: usize,
    ) -> Result<(), KernelError> {
        check_len("input", x.len(), rows.saturating_mul(self.in_dim))?;
        check_len("output", out.len(), rows.saturating_mul(self.out_dim))?;
        if let Epilogue::Add(residual) = epilogue {
            check_len("residual", residual.len(), out.len())?;
        }
        if rows == 0 {
            return Ok(());
        }
        match &self.packed {
            Packed::Int8 { backend, weight } => {
                let q = int8::QuantRows::new(x, rows, self.in_dim, weight.kp, *backend);
                let g = grid(
                    rows,
                    weight.panels,
                    threads,
                    int8::row_unit(*backend),
                    int8::max_task_rows(*backend, weight.kp),
                );
                let ptr = OutPtr(out.as_mut_ptr());
                let task = |t: usize| {
                    let (r0, r1, p0, p1) = g.task(t, rows, weight.panels);
                    // SAFETY: `out` holds rows × out_dim values (checked above) and the tasks of
                    // one grid cover disjoint rectangles of it (`Grid::task`), whose row blocks
                    // start at multiples of the backend's row unit; `q` was quantized for this
                    // backend from x's rows × in_dim values (checked above), and `weight` packed
                    // for in_dim × out_dim by a backend this CPU runs (checked when packing).
                    unsafe {
                        int8::Task {
                            q: &q,
                            w: weight,
                            out_dim: self.out_dim,
                            out: ptr.get(),
                            rows: (r0, r1),
                            panels: (p0, p1),
                            epilogue,
                        }
                        .run(*backend)
                    }
                };
                if g.tasks() == 1 {
                    task(0);
                } else {
                    use rayon::prelude::*;
                    (0..g.tasks()).into_par_iter().for_each(task);
                }
            }
            Packed::F32 {
                backend,
                weight,
                bias,
            } => {
                let product = F32Product {
                    backend: *backend,
                    shape: Shape {
                        k: self.in_dim,
                        n: self.out_dim,
                    },
                    weights: f32::F32Weights::Packed(weight.data.as_slice()),
                    panels: weight.panels,
                    bias,
                };
                // SAFETY: x and out were checked against rows, in_dim and out_dim above, and
                // the weight and bias packed for out_dim × in_dim by `backend`, which this CPU
                // runs (checked when packing).
                unsafe { product.run(x, rows, out, epilogue, threads) };
            }
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16 {
                backend,
                weight,
                bias,
            } => {
                let shape = Shape {
                    k: self.in_dim,
                    n: self.out_dim,
                };
                let g = grid(
                    rows,
                    weight.panels,
                    threads,
                    x86::row_unit(*backend),
                    x86::max_task_rows(self.in_dim),
                );
                let task = |out: *mut f32, r: (usize, usize), p: (usize, usize)| {
                    // SAFETY: `x` holds rows × in_dim values (checked above), `weight` and
                    // `bias` were packed for out_dim × in_dim by `backend`, which this CPU runs
                    // (checked when packing); `out` is the rows × out_dim output and run_grid
                    // gives each task its own rectangle.
                    unsafe { x86::run_task(*backend, shape, x, weight, bias, out, r, p) }
                };
                // SAFETY: out holds rows × out_dim values (checked above); each task writes
                // its rectangle of 32-column panels only (x86::run_task's contract).
                unsafe { run_grid(out, (rows, self.out_dim), g, x86::NR, epilogue, &task) };
            }
        }
        Ok(())
    }
}

/// Sizes of a product: K inputs, N outputs.
#[derive(Debug, Clone, Copy)]
struct Shape {
    k: usize,
    n: usize,
}

/// An f32 product: the weight (packed or as given), its backend and padded bias.
struct F32Product<'a> {
    backend: Backend,
    shape: Shape,
    weights: f32::F32Weights<'a>,
    panels: usize,
    bias: &'a [f32],
}

impl F32Product<'_> {
    /// `out = x · Wᵀ + b`, then `epilogue`, for `rows` rows, in tasks for `threads` threads.
    ///
    /// # Safety
    /// `x` must hold `rows × k` values and `out` `rows × n` (and an `Add` epilogue's residual as
    /// many); the weights must be `n × k` (packed: `panels` panels of it), `bias` hold
    /// `panels × 48` values, and the backend be an f32 one this CPU runs.
    unsafe fn run(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        epilogue: Epilogue,
        threads: usize,
    ) {
        let g = grid(
            rows,
            self.panels,
            threads,
            f32::row_unit(self.backend),
            f32::max_task_rows(self.shape.k),
        );
        let task = |out: *mut f32, r: (usize, usize), p: (usize, usize)| {
            // SAFETY: the lengths and the backend as this function's contract says; `out` is
            // the rows × n output and run_grid gives each task its own rectangle.
            unsafe {
                f32::run_task(
                    self.backend,
                    self.shape,
                    x,
                    self.weights,
                    self.bias,
                    out,
                    r,
                    p,
                )
            }
        };
        // SAFETY: out holds rows × n values (the contract); each task writes its rectangle of
        // 48-column panels only (f32::run_task's contract).
        unsafe { run_grid(out, (rows, self.shape.n), g, f32::NRF, epilogue, &task) };
    }
}

/// The bias (or zeros), padded to whole panels of `width` columns.
fn padded_bias(bias: Option<&[f32]>, n: usize, width: usize) -> Vec<f32> {
    let mut b = vec![0.0; n.div_ceil(width) * width];
    if let Some(bias) = bias {
        b[..n].copy_from_slice(bias);
    }
    b
}

/// `out = x · Wᵀ + b`, then `epilogue`, over f32 weights where they are: `parts` are `[out_i,
/// in_dim]` row-major weights taken as one layer whose weight is them stacked (q, k and v: one
/// `[rows, Σ out_i]` output, their weights never copied into one). Nothing is packed ahead: each
/// panel's K-block is packed into scratch as the product reaches it, so a single image does not
/// wait for a pass over every weight, and the sums are the same bits as a packed layer's
/// (`f32.rs`). Lengths checked.
pub fn forward_in_place(
    parts: &[&[f32]],
    bias: Option<&[f32]>,
    in_dim: usize,
    (x, rows): (&[f32], usize),
    out: &mut [f32],
    epilogue: Epilogue,
) -> Result<(), KernelError> {
    if in_dim == 0 {
        return Err(KernelError::Empty { in_dim, out_dim: 0 });
    }
    if let Some(p) = parts.iter().find(|p| p.len() % in_dim != 0) {
        return Err(KernelError::Length {
            what: "weight part",
            got: p.len(),
            expected: p.len().next_multiple_of(in_dim),
        });
    }
    let out_dim: usize = parts.iter().map(|p| p.len() / in_dim).sum();
    if out_dim == 0 {
        return Err(KernelError::Empty { in_dim, out_dim });
    }
    if let Some(b) = bias {
        check_len("bias", b.len(), out_dim)?;
    }
    check_len("input", x.len(), rows.saturating_mul(in_dim))?;
    check_len("output", out.len(), rows.saturating_mul(out_dim))?;
    if let Epilogue::Add(residual) = epilogue {
        check_len("residual", residual.len(), out.len())?;
    }
    if rows == 0 {
        return Ok(());
    }
    let bias = padded_bias(bias, out_dim, f32::NRF);
    let product = F32Product {
        backend: Backend::best(Precision::F32),
        shape: Shape {
            k: in_dim,
            n: out_dim,
        },
        weights: f32::F32Weights::Rows(parts),
        panels: out_dim.div_ceil(f32::NRF),
        bias: &bias,
    };
    // SAFETY: every length run relies on was checked just above; best(F32) is an f32 backend
    // this CPU runs.
    unsafe { product.run(x, rows, out, epilogue, rayon::current_num_threads()) };
    Ok(())
}

#[cfg(test)]
mod tests;
