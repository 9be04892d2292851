//! Differentiable CPU operations that candle lacks, needed to fine-tune the top of
//! Xception/ResNet-style ONNX graphs with candle's autodiff.
//!
//! Both operations are f32-only, CPU-only `CustomOp`s over NCHW tensors. Their backward
//! passes are themselves implemented as (non-differentiable) custom ops so that they can
//! work directly on the CPU storage slices instead of copying tensors out to `Vec`s.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// 2-D max pooling over an NCHW f32 tensor, differentiable with respect to `x`.
///
/// `pads` is in ONNX order `[top, left, bottom, right]`; padded cells are −∞ and never win.
/// The output size is floored as in ONNX `MaxPool` with `ceil_mode = 0`:
/// `out = (in + pad_begin + pad_end − kernel) / stride + 1`. The backward pass routes each
/// output gradient to the first maximum of its window in row-major order (as ONNX Runtime
/// picks its arg-max) and accumulates where windows overlap.
///
/// This exists because candle's own `max_pool2d` backward only supports `kernel == stride`,
/// whereas Xception and ResNet use overlapping 3×3 stride-2 windows.
pub fn max_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), pads: [usize; 4]) -> Result<Tensor> {
    check_cpu_f32(x, MAX_POOL, "input")?;
    let window = Window::new(kernel, stride, pads, (1, 1));
    // Validate before `contiguous` so shape errors are reported without copying.
    pool_shape(&window, x.dims())?;
    x.contiguous()?.apply_op1(MaxPool { window })
}

/// Depthwise 2-D convolution: an ONNX `Conv` whose `group` equals the input channel count,
/// differentiable with respect to both `x` and `kernel`.
///
/// `x` is `[N, C, H, W]`, `kernel` is `[C·m, 1, kh, kw]` with channel multiplier `m ≥ 1`
/// (output channel `o` reads input channel `o / m`). Padding is zeros, given as
/// `[top, left, bottom, right]`; there is no bias (the caller adds it). The output size is
/// `(in + pad_begin + pad_end − dilation·(k − 1) − 1) / stride + 1`.
///
/// This exists because candle's grouped `conv2d` runs one full convolution per group, which
/// for depthwise layers (hundreds of single-channel groups) is orders of magnitude slower
/// than a direct per-plane loop, in both the forward and the backward pass.
pub fn depthwise_conv2d(
    x: &Tensor,
    kernel: &Tensor,
    stride: (usize, usize),
    pads: [usize; 4],
    dilation: (usize, usize),
) -> Result<Tensor> {
    check_cpu_f32(x, DEPTHWISE, "input")?;
    check_cpu_f32(kernel, DEPTHWISE, "kernel")?;
    let window = Window::new((1, 1), stride, pads, dilation);
    // The kernel size comes from the kernel tensor, so only the dims are checked here.
    DwShape::new(&window, x.dims(), kernel.dims())?;
    let (x, kernel) = (x.contiguous()?, kernel.contiguous()?);
    x.apply_op2(&kernel, DepthwiseConv { window })
}

const MAX_POOL: &str = "max_pool2d";
const DEPTHWISE: &str = "depthwise_conv2d";

fn check_cpu_f32(t: &Tensor, op: &str, what: &str) -> Result<()> {
    if !t.device().is_cpu() {
        bail!("{op}: {what} must be on the CPU, got {:?}", t.device().location());
    }
    if t.dtype() != DType::F32 {
        bail!("{op}: {what} must be f32, got {:?}", t.dtype());
    }
    Ok(())
}

/// Borrows the f32 data a contiguous layout covers. Non-contiguous layouts are refused
/// rather than gathered because the public wrappers always hand over contiguous tensors.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: only f32 tensors are supported");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: expects a contiguous tensor");
    };
    Ok(&v[start..end])
}

fn dims4(dims: &[usize], op: &str, what: &str) -> Result<[usize; 4]> {
    match dims {
        &[a, b, c, d] => Ok([a, b, c, d]),
        _ => bail!("{op}: {what} must be rank 4, got shape {dims:?}"),
    }
}

/// Kernel, stride, padding and dilation of a sliding window, as given by the caller.
#[derive(Clone, Copy, Debug)]
struct Window {
    kernel: (usize, usize),
    stride: (usize, usize),
    pads: [usize; 4],
    dilation: (usize, usize),
}

impl Window {
    fn new(kernel: (usize, usize), stride: (usize, usize), pads: [usize; 4], dilation: (usize, usize)) -> Self {
        Self { kernel, stride, pads, dilation }
    }

    fn geom(&self, op: &str, in_h: usize, in_w: usize) -> Result<Geom> {
        let [pt, pl, pb, pr] = self.pads;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (dh, dw) = self.dilation;
        let out_h = out_len(op, "height", in_h, pt + pb, kh, sh, dh)?;
        let out_w = out_len(op, "width", in_w, pl + pr, kw, sw, dw)?;
        Ok(Geom { in_h, in_w, out_h, out_w, kh, kw, sh, sw, dh, dw, pt, pl })
    }
}

fn out_len(
    op: &str,
    axis: &str,
    input: usize,
    pad: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        bail!("{op}: kernel ({kernel}), stride ({stride}) and dilation ({dilation}) along {axis} must all be ≥ 1");
    }
    if input == 0 {
        bail!("{op}: input {axis} is 0");
    }
    // Saturating so absurd parameters produce an error instead of an overflow panic.
    let span = dilation.saturating_mul(kernel - 1).saturating_add(1);
    let padded = input.saturating_add(pad);
    if padded < span {
        bail!("{op}: output {axis} would be < 1 (input {input} + padding {pad} < kernel extent {span})");
    }
    Ok((padded - span) / stride + 1)
}

/// Resolved sizes of one input plane / output plane pair.
#[derive(Clone, Copy, Debug)]
struct Geom {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
}

/// The output columns `lo..hi` a kernel column reaches without touching padding, and the
/// input column that `lo` reads.
#[derive(Clone, Copy, Debug)]
struct Span {
    lo: usize,
    hi: usize,
    start: usize,
}

impl Geom {
    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let pos = oy * self.sh + ky * self.dh;
        pos.checked_sub(self.pt).filter(|&iy| iy < self.in_h)
    }

    fn in_col(&self, ox: usize, kx: usize) -> Option<usize> {
        let pos = ox * self.sw + kx * self.dw;
        pos.checked_sub(self.pl).filter(|&ix| ix < self.in_w)
    }

    /// Column spans are the same for every row, so they are computed once per call; this
    /// keeps padding checks out of the inner loops.
    fn col_spans(&self) -> Vec<Span> {
        (0..self.kw).map(|kx| self.col_span(kx)).collect()
    }

    fn col_span(&self, kx: usize) -> Span {
        let off = kx * self.dw;
        let lo = self.pl.saturating_sub(off).div_ceil(self.sw);
        let hi = (self.in_w + self.pl).saturating_sub(off).div_ceil(self.sw).min(self.out_w);
        if lo >= hi {
            return Span { lo: 0, hi: 0, start: 0 };
        }
        Span { lo, hi, start: lo * self.sw + off - self.pl }
    }

    /// Calls `f(oy, iy, tap, span)` for every output row and kernel tap that overlaps real
    /// input; the three depthwise kernels differ only in what they do per tap.
    fn for_each_tap(&self, spans: &[Span], mut f: impl FnMut(usize, usize, usize, &Span)) {
        for oy in 0..self.out_h {
            for ky in 0..self.kh {
                let Some(iy) = self.in_row(oy, ky) else {
                    continue;
                };
                for (kx, span) in spans.iter().enumerate() {
                    if span.lo < span.hi {
                        f(oy, iy, ky * self.kw + kx, span);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Max pooling
// ---------------------------------------------------------------------------------------

struct MaxPool {
    window: Window,
}

/// Backward of [`MaxPool`] as `(x, grad_y) -> grad_x`; the arg-max is recomputed from `x`
/// so the forward op needs no mutable state.
struct MaxPoolGrad {
    window: Window,
}

/// Returns `(n·c, geometry)` after checking rank and window.
fn pool_shape(window: &Window, dims: &[usize]) -> Result<(usize, Geom)> {
    let [n, c, h, w] = dims4(dims, MAX_POOL, "input")?;
    let [pt, pl, pb, pr] = window.pads;
    let (kh, kw) = window.kernel;
    // ONNX Runtime rejects this too; it would also allow windows made only of padding.
    if pt.max(pb) >= kh || pl.max(pr) >= kw {
        bail!("{MAX_POOL}: pads {:?} must be smaller than kernel {:?}", window.pads, window.kernel);
    }
    Ok((n * c, window.geom(MAX_POOL, h, w)?))
}

/// Index (within the plane) and value of the first maximum of the window at `(oy, ox)`.
/// Strict `>` keeps the first of equal values, matching ONNX Runtime's arg-max.
fn window_max(g: &Geom, plane: &[f32], oy: usize, ox: usize) -> (usize, f32) {
    let mut best = (usize::MAX, f32::NEG_INFINITY);
    for ky in 0..g.kh {
        let Some(iy) = g.in_row(oy, ky) else { continue };
        for kx in 0..g.kw {
            let Some(ix) = g.in_col(ox, kx) else { continue };
            let i = iy * g.in_w + ix;
            if best.0 == usize::MAX || plane[i] > best.1 {
                best = (i, plane[i]);
            }
        }
    }
    best
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        MAX_POOL
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, g) = pool_shape(&self.window, layout.dims())?;
        let x = f32_slice(storage, layout, MAX_POOL)?;
        let mut y = vec![0f32; planes * g.out_plane()];
        y.par_chunks_mut(g.out_plane()).enumerate().for_each(|(p, yp)| {
            let xp = &x[p * g.in_plane()..][..g.in_plane()];
            for (o, v) in yp.iter_mut().enumerate() {
                *v = window_max(&g, xp, o / g.out_w, o % g.out_w).1;
            }
        });
        let d = layout.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], g.out_h, g.out_w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let op = MaxPoolGrad { window: self.window };
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad, &op)?))
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max_pool2d_grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, g) = pool_shape(&self.window, xl.dims())?;
        let d = xl.dims();
        expect_dims(gl.dims(), &[d[0], d[1], g.out_h, g.out_w], MAX_POOL, "output gradient")?;
        let x = f32_slice(xs, xl, MAX_POOL)?;
        let gy = f32_slice(gs, gl, MAX_POOL)?;
        let mut gx = vec![0f32; planes * g.in_plane()];
        gx.par_chunks_mut(g.in_plane()).enumerate().for_each(|(p, gxp)| {
            let xp = &x[p * g.in_plane()..][..g.in_plane()];
            let gyp = &gy[p * g.out_plane()..][..g.out_plane()];
            for (o, &gv) in gyp.iter().enumerate() {
                gxp[window_max(&g, xp, o / g.out_w, o % g.out_w).0] += gv;
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from(d)))
    }
}

fn expect_dims(got: &[usize], want: &[usize], op: &str, what: &str) -> Result<()> {
    if got != want {
        bail!("{op}: {what} has shape {got:?}, expected {want:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Depthwise convolution
// ---------------------------------------------------------------------------------------

struct DepthwiseConv {
    window: Window,
}

/// `(grad_y, kernel) -> grad_x`; needs the input dims because the floored output size
/// does not determine them.
struct DwGradInput {
    window: Window,
    x_dims: [usize; 4],
}

/// `(x, grad_y) -> grad_kernel`.
struct DwGradKernel {
    window: Window,
    k_dims: [usize; 4],
}

/// Batch, input channels, channel multiplier and plane geometry of one depthwise call.
#[derive(Clone, Copy, Debug)]
struct DwShape {
    n: usize,
    c: usize,
    m: usize,
    g: Geom,
}

impl DwShape {
    fn new(window: &Window, x_dims: &[usize], k_dims: &[usize]) -> Result<Self> {
        let [n, c, h, w] = dims4(x_dims, DEPTHWISE, "input")?;
        let [ko, ki, kh, kw] = dims4(k_dims, DEPTHWISE, "kernel")?;
        if ki != 1 || c == 0 || ko == 0 || ko % c != 0 {
            bail!("{DEPTHWISE}: kernel shape {k_dims:?} must be [C·m, 1, kh, kw] with m ≥ 1 for {c} input channels");
        }
        let window = Window { kernel: (kh, kw), ..*window };
        let g = window.geom(DEPTHWISE, h, w)?;
        Ok(Self { n, c, m: ko / c, g })
    }

    fn c_out(&self) -> usize {
        self.c * self.m
    }

    fn out_dims(&self) -> [usize; 4] {
        [self.n, self.c_out(), self.g.out_h, self.g.out_w]
    }

    fn k_dims(&self) -> [usize; 4] {
        [self.c_out(), 1, self.g.kh, self.g.kw]
    }

    fn x_plane<'a>(&self, x: &'a [f32], n: usize, c: usize) -> &'a [f32] {
        &x[(n * self.c + c) * self.g.in_plane()..][..self.g.in_plane()]
    }

    fn y_plane<'a>(&self, y: &'a [f32], n: usize, o: usize) -> &'a [f32] {
        &y[(n * self.c_out() + o) * self.g.out_plane()..][..self.g.out_plane()]
    }

    fn k_plane<'a>(&self, k: &'a [f32], o: usize) -> &'a [f32] {
        &k[o * self.g.taps()..][..self.g.taps()]
    }
}

/// `dst[i] += w · src[i·stride]`; the unit-stride branch is split out so it vectorises.
#[inline]
fn axpy_gather(dst: &mut [f32], src: &[f32], w: f32, stride: usize) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
    } else {
        dst.iter_mut().zip(src.iter().step_by(stride)).for_each(|(d, s)| *d += w * s);
    }
}

/// `dst[i·stride] += w · src[i]`, the transpose of [`axpy_gather`].
#[inline]
fn axpy_scatter(dst: &mut [f32], src: &[f32], w: f32, stride: usize) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
    } else {
        dst.iter_mut().step_by(stride).zip(src).for_each(|(d, s)| *d += w * s);
    }
}

/// `Σ a[i] · b[i·stride]`, with eight independent partial sums so the unit-stride case
/// vectorises despite float addition not being associative.
#[inline]
fn dot_strided(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if stride != 1 {
        return a.iter().zip(b.iter().step_by(stride)).map(|(x, y)| x * y).sum();
    }
    let b = &b[..a.len()];
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn dw_forward(s: &DwShape, x: &[f32], k: &[f32]) -> Vec<f32> {
    let g = s.g;
    let spans = g.col_spans();
    let mut y = vec![0f32; s.n * s.c_out() * g.out_plane()];
    y.par_chunks_mut(g.out_plane()).enumerate().for_each(|(p, yp)| {
        let (n, o) = (p / s.c_out(), p % s.c_out());
        let (xp, kp) = (s.x_plane(x, n, o / s.m), s.k_plane(k, o));
        g.for_each_tap(&spans, |oy, iy, t, sp| {
            let row = oy * g.out_w;
            let src = &xp[iy * g.in_w + sp.start..];
            axpy_gather(&mut yp[row + sp.lo..row + sp.hi], src, kp[t], g.sw);
        });
    });
    y
}

/// Each task owns one input-gradient plane and gathers from the `m` output channels that
/// read it, so no two tasks write the same memory.
fn dw_grad_input(s: &DwShape, gy: &[f32], k: &[f32]) -> Vec<f32> {
    let g = s.g;
    let spans = g.col_spans();
    let mut gx = vec![0f32; s.n * s.c * g.in_plane()];
    gx.par_chunks_mut(g.in_plane()).enumerate().for_each(|(p, gxp)| {
        let (n, c) = (p / s.c, p % s.c);
        for o in c * s.m..(c + 1) * s.m {
            let (gyp, kp) = (s.y_plane(gy, n, o), s.k_plane(k, o));
            g.for_each_tap(&spans, |oy, iy, t, sp| {
                let row = oy * g.out_w;
                let dst = &mut gxp[iy * g.in_w + sp.start..];
                axpy_scatter(dst, &gyp[row + sp.lo..row + sp.hi], kp[t], g.sw);
            });
        }
    });
    gx
}

/// Each task owns one output channel's kernel and reduces over the batch itself, which
/// avoids per-task partial buffers and a separate reduction pass.
fn dw_grad_kernel(s: &DwShape, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let g = s.g;
    let spans = g.col_spans();
    let mut gk = vec![0f32; s.c_out() * g.taps()];
    gk.par_chunks_mut(g.taps()).enumerate().for_each(|(o, gkp)| {
        for n in 0..s.n {
            let (xp, gyp) = (s.x_plane(x, n, o / s.m), s.y_plane(gy, n, o));
            g.for_each_tap(&spans, |oy, iy, t, sp| {
                let row = oy * g.out_w;
                let src = &xp[iy * g.in_w + sp.start..];
                gkp[t] += dot_strided(&gyp[row + sp.lo..row + sp.hi], src, g.sw);
            });
        }
    });
    gk
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        DEPTHWISE
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ks: &CpuStorage, kl: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = DwShape::new(&self.window, xl.dims(), kl.dims())?;
        let x = f32_slice(xs, xl, DEPTHWISE)?;
        let k = f32_slice(ks, kl, DEPTHWISE)?;
        Ok((CpuStorage::F32(dw_forward(&s, x, k)), Shape::from(&s.out_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, kernel, grad) = (x.contiguous()?, kernel.contiguous()?, grad_res.contiguous()?);
        let window = self.window;
        let x_dims = dims4(x.dims(), DEPTHWISE, "input")?;
        let k_dims = dims4(kernel.dims(), DEPTHWISE, "kernel")?;
        let gx = grad.apply_op2_no_bwd(&kernel, &DwGradInput { window, x_dims })?;
        let gk = x.apply_op2_no_bwd(&grad, &DwGradKernel { window, k_dims })?;
        Ok((Some(gx), Some(gk)))
    }
}

impl CustomOp2 for DwGradInput {
    fn name(&self) -> &'static str {
        "depthwise_conv2d_grad_input"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ks: &CpuStorage, kl: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = DwShape::new(&self.window, &self.x_dims, kl.dims())?;
        expect_dims(gl.dims(), &s.out_dims(), DEPTHWISE, "output gradient")?;
        let gy = f32_slice(gs, gl, DEPTHWISE)?;
        let k = f32_slice(ks, kl, DEPTHWISE)?;
        Ok((CpuStorage::F32(dw_grad_input(&s, gy, k)), Shape::from(&self.x_dims)))
    }
}

impl CustomOp2 for DwGradKernel {
    fn name(&self) -> &'static str {
        "depthwise_conv2d_grad_kernel"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = DwShape::new(&self.window, xl.dims(), &self.k_dims)?;
        expect_dims(gl.dims(), &s.out_dims(), DEPTHWISE, "output gradient")?;
        let x = f32_slice(xs, xl, DEPTHWISE)?;
        let gy = f32_slice(gs, gl, DEPTHWISE)?;
        Ok((CpuStorage::F32(dw_grad_kernel(&s, x, gy)), Shape::from(&s.k_dims())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

    type Dims = [usize; 4];
    /// Input dims, kernel, stride, pads.
    type PoolCase = (Dims, (usize, usize), (usize, usize), [usize; 4]);
    /// Input dims, kernel dims, stride, pads, dilation.
    type DwCase = (Dims, Dims, (usize, usize), [usize; 4], (usize, usize));

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5eed)
    }

    fn uniform(rng: &mut StdRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Distinct values at least 0.05 apart, so no max-pool window has a near-tie and
    /// finite differences never cross an arg-max switch.
    fn distinct(rng: &mut StdRng, len: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..len).map(|i| (i as f32 - len as f32 / 2.0) * 0.05).collect();
        v.shuffle(rng);
        v
    }

    fn tensor(v: &[f32], d: Dims) -> Tensor {
        Tensor::from_vec(v.to_vec(), &d, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn at(x: &[f32], d: Dims, n: usize, c: usize, iy: isize, ix: isize) -> Option<f64> {
        let (h, w) = (d[2] as isize, d[3] as isize);
        let inside = (0..h).contains(&iy) && (0..w).contains(&ix);
        inside.then(|| x[((n * d[1] + c) * d[2] + iy as usize) * d[3] + ix as usize] as f64)
    }

    fn ref_out(d: Dims, k: (usize, usize), s: (usize, usize), p: [usize; 4], dil: (usize, usize)) -> (usize, usize) {
        let oh = (d[2] + p[0] + p[2] - dil.0 * (k.0 - 1) - 1) / s.0 + 1;
        let ow = (d[3] + p[1] + p[3] - dil.1 * (k.1 - 1) - 1) / s.1 + 1;
        (oh, ow)
    }

    fn ref_pool(x: &[f32], d: Dims, k: (usize, usize), s: (usize, usize), p: [usize; 4]) -> Vec<f64> {
        let (oh, ow) = ref_out(d, k, s, p, (1, 1));
        let mut out = Vec::new();
        for n in 0..d[0] {
            for c in 0..d[1] {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = f64::NEG_INFINITY;
                        for ky in 0..k.0 {
                            for kx in 0..k.1 {
                                let iy = (oy * s.0 + ky) as isize - p[0] as isize;
                                let ix = (ox * s.1 + kx) as isize - p[1] as isize;
                                if let Some(v) = at(x, d, n, c, iy, ix) {
                                    best = best.max(v);
                                }
                            }
                        }
                        out.push(best);
                    }
                }
            }
        }
        out
    }

    /// A window's stride, padding `[top, left, bottom, right]` and dilation.
    type Geometry = ((usize, usize), [usize; 4], (usize, usize));

    fn ref_dw(x: &[f32], d: Dims, k: &[f32], kd: Dims, (s, p, dil): Geometry) -> Vec<f64> {
        let (oh, ow) = ref_out(d, (kd[2], kd[3]), s, p, dil);
        let m = kd[0] / d[1];
        let mut out = Vec::new();
        for n in 0..d[0] {
            for o in 0..kd[0] {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0f64;
                        for ky in 0..kd[2] {
                            for kx in 0..kd[3] {
                                let iy = (oy * s.0 + ky * dil.0) as isize - p[0] as isize;
                                let ix = (ox * s.1 + kx * dil.1) as isize - p[1] as isize;
                                let w = k[(o * kd[2] + ky) * kd[3] + kx] as f64;
                                acc += w * at(x, d, n, o / m, iy, ix).unwrap_or(0.0);
                            }
                        }
                        out.push(acc);
                    }
                }
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(err <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
        }
    }

    #[test]
    fn max_pool_forward_matches_reference() {
        let mut rng = rng();
        let cases: [PoolCase; 5] = [
            ([2, 3, 9, 9], (3, 3), (2, 2), [1, 1, 1, 1]),
            ([2, 3, 8, 10], (3, 3), (2, 2), [0, 0, 1, 1]),
            ([1, 4, 8, 6], (2, 2), (2, 2), [0, 0, 0, 0]),
            ([1, 2, 7, 7], (3, 3), (1, 1), [1, 1, 1, 1]),
            ([1, 2, 5, 9], (2, 3), (1, 2), [1, 0, 0, 2]),
        ];
        for (d, k, s, p) in cases {
            let x = uniform(&mut rng, d.iter().product());
            let y = max_pool2d(&tensor(&x, d), k, s, p).unwrap();
            let (oh, ow) = ref_out(d, k, s, p, (1, 1));
            assert_eq!(y.dims(), &[d[0], d[1], oh, ow]);
            assert_close(&values(&y), &ref_pool(&x, d, k, s, p), 0.0, "max_pool2d");
        }
    }

    #[test]
    fn depthwise_forward_matches_reference() {
        let mut rng = rng();
        let cases: [DwCase; 5] = [
            ([2, 3, 7, 7], [3, 1, 3, 3], (1, 1), [1, 1, 1, 1], (1, 1)),
            ([2, 3, 8, 9], [6, 1, 3, 3], (2, 2), [0, 0, 1, 1], (1, 1)),
            ([1, 4, 9, 9], [4, 1, 3, 3], (1, 1), [2, 2, 2, 2], (2, 2)),
            ([1, 2, 10, 7], [6, 1, 3, 2], (3, 1), [1, 0, 2, 1], (2, 1)),
            ([3, 2, 5, 6], [2, 1, 1, 1], (1, 1), [0, 0, 0, 0], (1, 1)),
        ];
        for (d, kd, s, p, dil) in cases {
            let x = uniform(&mut rng, d.iter().product());
            let k = uniform(&mut rng, kd.iter().product());
            let y = depthwise_conv2d(&tensor(&x, d), &tensor(&k, kd), s, p, dil).unwrap();
            let (oh, ow) = ref_out(d, (kd[2], kd[3]), s, p, dil);
            assert_eq!(y.dims(), &[d[0], kd[0], oh, ow]);
            assert_close(&values(&y), &ref_dw(&x, d, &k, kd, (s, p, dil)), 1e-5, "depthwise");
        }
    }

    #[test]
    fn non_contiguous_inputs_are_handled() {
        let mut rng = rng();
        // Stored as NHCW, viewed as NCHW.
        let base = Var::from_vec(uniform(&mut rng, 2 * 5 * 3 * 6), (2, 5, 3, 6), &Device::Cpu).unwrap();
        let x = base.as_tensor().permute((0, 2, 1, 3)).unwrap();
        assert!(!x.is_contiguous());
        let d = [2, 3, 5, 6];
        let xv = values(&x);
        let k = uniform(&mut rng, 27);
        let kt = tensor(&k, [3, 3, 3, 1]).permute((0, 3, 1, 2)).unwrap();
        let kv = values(&kt);
        let y = depthwise_conv2d(&x, &kt, (1, 1), [1, 1, 1, 1], (1, 1)).unwrap();
        let want = ref_dw(&xv, d, &kv, [3, 1, 3, 3], ((1, 1), [1, 1, 1, 1], (1, 1)));
        assert_close(&values(&y), &want, 1e-5, "depthwise non-contiguous");
        let z = max_pool2d(&x, (3, 3), (2, 2), [1, 1, 1, 1]).unwrap();
        assert_close(&values(&z), &ref_pool(&xv, d, (3, 3), (2, 2), [1, 1, 1, 1]), 0.0, "pool");
        let grads = (y.sum_all().unwrap() + z.sum_all().unwrap()).unwrap().backward().unwrap();
        assert_eq!(grads.get(base.as_tensor()).unwrap().dims(), &[2, 5, 3, 6]);
    }

    #[test]
    fn max_pool_hand_checked() {
        let x = Var::from_vec(vec![1f32, 5., 2., 7., 3., 9., 4., 8., 6.], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool2d(x.as_tensor(), (2, 2), (1, 1), [0; 4]).unwrap();
        assert_eq!(values(&y), [7., 9., 8., 9.]);
        let g = y.sum_all().unwrap().backward().unwrap();
        // 9 wins two windows, so its gradient accumulates.
        assert_eq!(values(g.get(x.as_tensor()).unwrap()), [0., 0., 0., 1., 0., 2., 0., 1., 0.]);

        // Xception's 3×3 stride 2 pad 1: windows overlap on the middle row and column.
        let y = max_pool2d(x.as_tensor(), (3, 3), (2, 2), [1; 4]).unwrap();
        assert_eq!(values(&y), [7., 9., 8., 9.]);

        // Ties go to the first maximum in row-major window order.
        let t = Var::from_vec(vec![2f32, 1., 2., 2.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = max_pool2d(t.as_tensor(), (2, 2), (1, 1), [0; 4]).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(values(g.get(t.as_tensor()).unwrap()), [1., 0., 0., 0.]);

        // Padding never wins, even over negative values.
        let n = tensor(&[-3., -1., -2., -4.], [1, 1, 2, 2]);
        let y = max_pool2d(&n, (2, 2), (1, 1), [1, 1, 0, 0]).unwrap();
        assert_eq!(values(&y), [-3., -1., -2., -1.]);
    }

    #[test]
    fn depthwise_hand_checked() {
        let xv: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let x = Var::from_vec(xv.clone(), (1, 1, 3, 3), &Device::Cpu).unwrap();
        let k = Var::from_vec(vec![1f32; 9], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = depthwise_conv2d(x.as_tensor(), k.as_tensor(), (1, 1), [1; 4], (1, 1)).unwrap();
        let box_sums = [12., 21., 16., 27., 45., 33., 24., 39., 28.];
        assert_eq!(values(&y), box_sums);
        let g = y.sum_all().unwrap().backward().unwrap();
        // Each input is read by as many outputs as there are in-bounds taps around it.
        assert_eq!(values(g.get(x.as_tensor()).unwrap()), [4., 6., 4., 6., 9., 6., 4., 6., 4.]);
        // By symmetry, tap (ky, kx) sums the same box as output (ky, kx).
        assert_eq!(values(g.get(k.as_tensor()).unwrap()), box_sums);

        let diag = tensor(&[1., 0., 0., -1.], [1, 1, 2, 2]);
        let y = depthwise_conv2d(x.as_tensor(), &diag, (1, 1), [0; 4], (1, 1)).unwrap();
        assert_eq!(values(&y), [-4., -4., -4., -4.]);
    }

    fn weighted_sum(y: &Tensor, r: &[f32]) -> f64 {
        values(y).iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    /// Central differences of `loss` with respect to every element of `v`.
    fn finite_diff(v: &[f32], d: Dims, loss: impl Fn(&Tensor) -> f64) -> Vec<f64> {
        const EPS: f32 = 1e-2;
        (0..v.len())
            .map(|i| {
                let (mut lo, mut hi) = (v.to_vec(), v.to_vec());
                lo[i] -= EPS;
                hi[i] += EPS;
                let step = hi[i] as f64 - lo[i] as f64;
                (loss(&tensor(&hi, d)) - loss(&tensor(&lo, d))) / step
            })
            .collect()
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let mut rng = rng();
        let cases: [PoolCase; 4] = [
            ([1, 2, 9, 9], (3, 3), (2, 2), [1, 1, 1, 1]),
            ([2, 1, 8, 8], (3, 3), (2, 2), [0, 0, 1, 1]),
            ([1, 2, 6, 8], (2, 2), (2, 2), [0, 0, 0, 0]),
            ([1, 1, 7, 6], (3, 2), (1, 1), [2, 1, 0, 1]),
        ];
        for (d, k, s, p) in cases {
            let xv = distinct(&mut rng, d.iter().product());
            let x = Var::from_tensor(&tensor(&xv, d)).unwrap();
            let y = max_pool2d(x.as_tensor(), k, s, p).unwrap();
            let r = uniform(&mut rng, y.elem_count());
            let rt = Tensor::from_vec(r.clone(), y.dims(), &Device::Cpu).unwrap();
            let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
            let got = values(grads.get(x.as_tensor()).unwrap());
            let want = finite_diff(&xv, d, |t| weighted_sum(&max_pool2d(t, k, s, p).unwrap(), &r));
            assert_close(&got, &want, 1e-2, "max_pool2d grad");
        }
    }

    #[test]
    fn depthwise_gradients_match_finite_differences() {
        let mut rng = rng();
        let cases: [DwCase; 4] = [
            ([2, 2, 6, 6], [2, 1, 3, 3], (1, 1), [1, 1, 1, 1], (1, 1)),
            ([1, 2, 7, 8], [4, 1, 3, 3], (2, 2), [0, 0, 1, 1], (1, 1)),
            ([1, 3, 8, 7], [3, 1, 3, 3], (1, 2), [2, 1, 2, 2], (2, 2)),
            ([2, 1, 5, 6], [3, 1, 2, 3], (2, 1), [1, 0, 0, 2], (1, 2)),
        ];
        for (d, kd, s, p, dil) in cases {
            let (xv, kv) = (uniform(&mut rng, d.iter().product()), uniform(&mut rng, kd.iter().product()));
            let x = Var::from_tensor(&tensor(&xv, d)).unwrap();
            let k = Var::from_tensor(&tensor(&kv, kd)).unwrap();
            let y = depthwise_conv2d(x.as_tensor(), k.as_tensor(), s, p, dil).unwrap();
            let r = uniform(&mut rng, y.elem_count());
            let rt = Tensor::from_vec(r.clone(), y.dims(), &Device::Cpu).unwrap();
            let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
            let conv = |xt: &Tensor, kt: &Tensor| depthwise_conv2d(xt, kt, s, p, dil).unwrap();
            let want_x = finite_diff(&xv, d, |t| weighted_sum(&conv(t, k.as_tensor()), &r));
            let want_k = finite_diff(&kv, kd, |t| weighted_sum(&conv(x.as_tensor(), t), &r));
            assert_close(&values(grads.get(x.as_tensor()).unwrap()), &want_x, 1e-2, "grad x");
            assert_close(&values(grads.get(k.as_tensor()).unwrap()), &want_k, 1e-2, "grad k");
        }
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let dev = &Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 4), DType::F32, dev).unwrap();
        let k = Tensor::zeros((2, 1, 3, 3), DType::F32, dev).unwrap();
        let x3 = Tensor::zeros((2, 4, 4), DType::F32, dev).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let pool = |t: &Tensor, k, s, p| max_pool2d(t, k, s, p).map(|_| ());
        assert!(pool(&x3, (2, 2), (2, 2), [0; 4]).is_err(), "rank 3");
        assert!(pool(&x, (5, 5), (1, 1), [0; 4]).is_err(), "output < 1");
        assert!(pool(&x, (2, 2), (1, 1), [2, 0, 0, 0]).is_err(), "pad >= kernel");
        assert!(pool(&x, (2, 2), (0, 1), [0; 4]).is_err(), "zero stride");
        assert!(pool(&x64, (2, 2), (2, 2), [0; 4]).is_err(), "f64");

        let dw = |x: &Tensor, k: &Tensor, s, d| depthwise_conv2d(x, k, s, [1; 4], d).map(|_| ());
        let shaped = |s: &[usize]| Tensor::zeros(s, DType::F32, dev).unwrap();
        assert!(dw(&x3, &k, (1, 1), (1, 1)).is_err(), "input rank 3");
        assert!(dw(&x, &shaped(&[2, 3, 3]), (1, 1), (1, 1)).is_err(), "kernel rank 3");
        assert!(dw(&x, &shaped(&[2, 2, 3, 3]), (1, 1), (1, 1)).is_err(), "kernel dim 1 != 1");
        assert!(dw(&x, &shaped(&[3, 1, 3, 3]), (1, 1), (1, 1)).is_err(), "C·m mismatch");
        assert!(dw(&x, &shaped(&[2, 1, 7, 3]), (1, 1), (1, 1)).is_err(), "output < 1");
        assert!(dw(&x, &k, (1, 1), (0, 1)).is_err(), "zero dilation");
        assert!(dw(&x64, &k, (1, 1), (1, 1)).is_err(), "f64 input");
        assert!(dw(&x, &k.to_dtype(DType::F64).unwrap(), (1, 1), (1, 1)).is_err(), "f64 kernel");
        let msg = dw(&x, &shaped(&[2, 2, 3, 3]), (1, 1), (1, 1)).unwrap_err().to_string();
        assert!(msg.contains("kernel shape"), "{msg}");
    }

    fn median_ms(mut f: impl FnMut()) -> f64 {
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[2]
    }

    /// Xception middle-flow shape. Ignored by default because candle's grouped conv takes
    /// minutes in a debug build; run with
    /// `cargo test --release --lib tune::ops -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing only"]
    fn timing_depthwise_vs_candle_grouped_conv() {
        let mut rng = rng();
        let (n, c, hw) = (8, 728, 19);
        let x = Var::from_vec(uniform(&mut rng, n * c * hw * hw), (n, c, hw, hw), &Device::Cpu).unwrap();
        let k = Var::from_vec(uniform(&mut rng, c * 9), (c, 1, 3, 3), &Device::Cpu).unwrap();
        let (xt, kt) = (x.as_tensor(), k.as_tensor());
        let ours = median_ms(|| {
            let y = depthwise_conv2d(xt, kt, (1, 1), [1; 4], (1, 1)).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
        let candle = median_ms(|| {
            let y = xt.conv2d(kt, 1, 1, 1, c).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
        println!(
            "depthwise 3x3 [8,728,19,19] fwd+bwd median of 5: ours {ours:.1} ms, candle grouped conv2d {candle:.1} ms"
        );
    }
}
