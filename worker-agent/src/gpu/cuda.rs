//! The CUDA frame engine: the frame operations of [`crate::frames`] on an NVIDIA GPU.
//!
//! - libcuda is loaded at run time (cudarc `dynamic-loading`). cudarc PANICS when the library
//!   is missing, so [`CudaEngine::try_new`] checks `is_culib_present()` first and still wraps
//!   the context creation in `catch_unwind`.
//! - Kernels ([`super::kernels::SOURCE`]) are compiled with NVRTC at first use; when NVRTC is
//!   missing or compilation fails the engine reports an error and the caller uses the CPU.
//! - Device buffers come from a [`Pool`] bounded by the configured GPU memory limit.
//! - One mutex serialises the engine's work on its stream; a job uses it from one thread.

use std::panic::catch_unwind;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use super::kernels;
use super::pool::{Pool, PoolError, PoolStats};
use crate::frames::{
    self, ChromaLayout, ColorRange, FrameError, LumaImage, Plane, RgbImage, YuvFrame,
};

/// Why a CUDA operation failed (the caller then runs the CPU twin).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// libcuda is absent or the device could not be opened.
    #[error("cuda unavailable: {0}")]
    Unavailable(String),
    /// NVRTC is absent or the kernels did not compile.
    #[error("cuda kernels: {0}")]
    Compile(String),
    /// A driver call (copy, launch, synchronise) failed.
    #[error("cuda driver: {0}")]
    Driver(String),
    /// The pool refused: the GPU memory limit would be passed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The input frame is malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

fn driver<E: std::fmt::Display>(e: E) -> CudaError {
    CudaError::Driver(e.to_string())
}

struct Kernels {
    yuv: CudaFunction,
    halve: CudaFunction,
    bilinear: CudaFunction,
    hist: CudaFunction,
    diff: CudaFunction,
    area: CudaFunction,
}

struct State {
    stream: Arc<CudaStream>,
    kernels: Option<Result<Arc<Kernels>, String>>,
    pool: Pool<CudaSlice<u8>>,
    hist: Option<CudaSlice<u32>>,
    sum: Option<CudaSlice<u64>>,
}

/// A pooled device buffer on loan: the slice and its size class.
struct Lease(CudaSlice<u8>, usize);

/// Frame operations on one CUDA device.
pub struct CudaEngine {
    ctx: Arc<CudaContext>,
    device_name: String,
    state: Mutex<State>,
    /// A driver call failed: CUDA errors are mostly sticky, so stop trying.
    broken: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for CudaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEngine")
            .field("device", &self.device_name)
            .finish_non_exhaustive()
    }
}

/// Whether libcuda can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries `dlopen` on the candidate library names; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The CUDA version the installed driver supports (13000 for 13.0), when a driver is present.
pub fn driver_cuda_version() -> Option<i32> {
    if !driver_present() {
        return None;
    }
    let mut v: std::ffi::c_int = 0;
    // SAFETY: the driver library is present (checked above); cuDriverGetVersion writes one int
    // through the pointer, which lives on this frame, and needs no cuInit.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
}

fn nvrtc_present() -> bool {
    // SAFETY: only tries `dlopen` on the candidate library names; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

fn grid_2d(w: u32, h: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (w.div_ceil(16), h.div_ceil(16), 1),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    }
}

fn grid_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256).clamp(1, 1024), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl CudaEngine {
    /// Open device `ordinal` with a pool of at most `memory_limit` bytes.
    pub fn try_new(ordinal: usize, memory_limit: usize) -> Result<Self, CudaError> {
        if !driver_present() {
            return Err(CudaError::Unavailable(
                "no CUDA driver (libcuda not found)".into(),
            ));
        }
        let ctx = catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|p| CudaError::Unavailable(format!("cuda init panicked: {}", panic_text(p))))?
            .map_err(|e| CudaError::Unavailable(e.to_string()))?;
        let device_name = ctx.name().unwrap_or_else(|_| format!("cuda:{ordinal}"));
        let limit = match ctx.mem_get_info() {
            Ok((free, _)) => memory_limit.min(free),
            Err(_) => memory_limit,
        };
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            device_name,
            broken: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                stream,
                kernels: None,
                pool: Pool::new(limit),
                hist: None,
                sum: None,
            }),
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.lock().pool.stats()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // No buffer outlives one locked call, so none is on loan now.
        guard.pool.reclaim_lost();
        guard
    }

    /// Stop using the device: every later call fails at once, so callers use the CPU.
    pub fn mark_broken(&self) {
        self.broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn kernels(&self, st: &mut State) -> Result<Arc<Kernels>, CudaError> {
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(CudaError::Unavailable(
                "an earlier driver error disabled the device".into(),
            ));
        }
        if st.kernels.is_none() {
            st.kernels = Some(self.compile());
        }
        match st.kernels.as_ref() {
            Some(Ok(k)) => Ok(k.clone()),
            Some(Err(e)) => Err(CudaError::Compile(e.clone())),
            None => Err(CudaError::Compile("not compiled".into())),
        }
    }

    fn compile(&self) -> Result<Arc<Kernels>, String> {
        if !nvrtc_present() {
            return Err("NVRTC (libnvrtc) not found".into());
        }
        let started = std::time::Instant::now();
        let ptx = catch_unwind(|| cudarc::nvrtc::compile_ptx(kernels::SOURCE))
            .map_err(panic_text)?
            .map_err(|e| e.to_string())?;
        let module = self.ctx.load_module(ptx).map_err(|e| e.to_string())?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| format!("{name}: {e}"))
        };
        let k = Kernels {
            yuv: f(kernels::NAMES[0])?,
            halve: f(kernels::NAMES[1])?,
            bilinear: f(kernels::NAMES[2])?,
            hist: f(kernels::NAMES[3])?,
            diff: f(kernels::NAMES[4])?,
            area: f(kernels::NAMES[5])?,
        };
        tracing::info!(device = %self.device_name, ms = started.elapsed().as_millis() as u64, "cuda kernels compiled");
        Ok(Arc::new(k))
    }

    fn take(st: &mut State, bytes: usize) -> Result<Lease, CudaError> {
        let stream = st.stream.clone();
        // SAFETY: the buffer is fully written (upload or kernel output) before it is read.
        let (buf, class) = st.pool.take(bytes, |n| unsafe { stream.alloc::<u8>(n) })?;
        Ok(Lease(buf, class))
    }

    fn give(st: &mut State, lease: Lease) {
        st.pool.put(lease.0, lease.1);
    }

    fn upload(st: &mut State, data: &[u8]) -> Result<Lease, CudaError> {
        let mut lease = Self::take(st, data.len())?;
        if let Err(e) = st.stream.memcpy_htod(data, &mut lease.0) {
            st.pool.forget(lease.0, lease.1);
            return Err(driver(e));
        }
        Ok(lease)
    }

    fn download(st: &State, lease: &Lease, len: usize) -> Result<Vec<u8>, CudaError> {
        let out = st
            .stream
            .clone_dtoh(&lease.0.slice(0..len))
            .map_err(driver)?;
        st.stream.synchronize().map_err(driver)?;
        Ok(out)
    }

    /// Resize `src` (w x h x ch, on the device) to dst_w x dst_h; consumes `src`.
    fn resize_on_device(
        st: &mut State,
        k: &Kernels,
        src: Lease,
        (w, h, ch): (u32, u32, usize),
        (dst_w, dst_h): (u32, u32),
    ) -> Result<Lease, CudaError> {
        let mut cur = src;
        let (mut cw, mut chh) = (w, h);
        for (nw, nh) in frames::halving_steps(w, h, dst_w, dst_h) {
            let mut next = Self::take(st, nw as usize * nh as usize * ch)?;
            let (iw, ih, ic, ow, oh) = (
                int(cw as usize),
                int(chh as usize),
                int(ch),
                int(nw as usize),
                int(nh as usize),
            );
            let mut b = st.stream.launch_builder(&k.halve);
            b.arg(&cur.0)
                .arg(&iw)
                .arg(&ih)
                .arg(&ic)
                .arg(&mut next.0)
                .arg(&ow)
                .arg(&oh);
            // SAFETY: the kernel reads cw*chh*ch bytes of `cur` and writes nw*nh*ch bytes of
            // `next`; both buffers are at least that large (pool classes round up).
            unsafe { b.launch(grid_2d(nw, nh)) }.map_err(driver)?;
            Self::give(st, cur);
            cur = next;
            (cw, chh) = (nw, nh);
        }
        if (cw, chh) == (dst_w, dst_h) {
            return Ok(cur);
        }
        let mut out = Self::take(st, dst_w as usize * dst_h as usize * ch)?;
        let (iw, ih, ic, ow, oh) = (
            int(cw as usize),
            int(chh as usize),
            int(ch),
            int(dst_w as usize),
            int(dst_h as usize),
        );
        let mut b = st.stream.launch_builder(&k.bilinear);
        b.arg(&cur.0)
            .arg(&iw)
            .arg(&ih)
            .arg(&ic)
            .arg(&mut out.0)
            .arg(&ow)
            .arg(&oh);
        // SAFETY: reads cw*chh*ch bytes of `cur`, writes dst_w*dst_h*ch bytes of `out`; both
        // buffers are at least that large.
        unsafe { b.launch(grid_2d(dst_w, dst_h)) }.map_err(driver)?;
        Self::give(st, cur);
        Ok(out)
    }

    /// YUV 4:2:0 -> RGB24, optionally resized on the device before download.
    pub fn yuv420_to_rgb(
        &self,
        f: &YuvFrame<'_>,
        size: Option<(u32, u32)>,
    ) -> Result<RgbImage, CudaError> {
        f.validate()?;
        if let Some((dw, dh)) = size {
            frames::check_dims(dw, dh)?;
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let k = self.kernels(st)?;
        let (w, h) = (f.width as usize, f.height as usize);
        let ch = h.div_ceil(2);
        let y = Self::upload(st, &f.y.data[..f.y.stride * (h - 1) + w])?;
        let u_len = f.u.stride * (ch - 1)
            + match f.layout {
                ChromaLayout::Planar => w.div_ceil(2),
                ChromaLayout::Interleaved => w.div_ceil(2) * 2,
            };
        let u = Self::upload(st, &f.u.data[..u_len])?;
        let v = match f.layout {
            ChromaLayout::Planar => Some(Self::upload(
                st,
                &f.v.data[..f.v.stride * (ch - 1) + w.div_ceil(2)],
            )?),
            ChromaLayout::Interleaved => None,
        };
        let mut rgb = Self::take(st, w * h * 3)?;
        let (ys, us, vs) = (int(f.y.stride), int(f.u.stride), int(f.v.stride));
        let inter = i32::from(f.layout == ChromaLayout::Interleaved);
        let full = i32::from(f.range == ColorRange::Full);
        let (wi, hi) = (int(w), int(h));
        {
            let v_buf = v.as_ref().map(|l| &l.0).unwrap_or(&u.0);
            let mut b = st.stream.launch_builder(&k.yuv);
            b.arg(&y.0).arg(&ys).arg(&u.0).arg(&us).arg(v_buf).arg(&vs);
            b.arg(&inter).arg(&full).arg(&mut rgb.0).arg(&wi).arg(&hi);
            // SAFETY: the planes were validated and uploaded with their strides; the kernel
            // reads inside them and writes w*h*3 bytes of `rgb`, which is at least that large.
            unsafe { b.launch(grid_2d(f.width, f.height)) }.map_err(driver)?;
        }
        Self::give(st, y);
        Self::give(st, u);
        if let Some(v) = v {
            Self::give(st, v);
        }
        let (dw, dh) = size.unwrap_or((f.width, f.height));
        let out = if (dw, dh) == (f.width, f.height) {
            rgb
        } else {
            Self::resize_on_device(st, &k, rgb, (f.width, f.height, 3), (dw, dh))?
        };
        let data = Self::download(st, &out, dw as usize * dh as usize * 3);
        Self::give(st, out);
        Ok(RgbImage {
            width: dw,
            height: dh,
            data: data?,
        })
    }

    /// Resize an interleaved 8-bit image with `channels` bytes per pixel.
    pub fn resize(
        &self,
        data: &[u8],
        (w, h, channels): (u32, u32, usize),
        (dw, dh): (u32, u32),
    ) -> Result<Vec<u8>, CudaError> {
        frames::check_dims(w, h)?;
        frames::check_dims(dw, dh)?;
        if data.len() < w as usize * h as usize * channels {
            return Err(FrameError::Dimensions {
                width: dw,
                height: dh,
                reason: "bad resize",
            }
            .into());
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let k = self.kernels(st)?;
        let src = Self::upload(st, &data[..w as usize * h as usize * channels])?;
        let out = if (w, h) == (dw, dh) {
            src
        } else {
            Self::resize_on_device(st, &k, src, (w, h, channels), (dw, dh))?
        };
        let res = Self::download(st, &out, dw as usize * dh as usize * channels);
        Self::give(st, out);
        res
    }

    /// Area-average downscale of one 8-bit plane (see [`frames::luma_area`]); `dw <= w`,
    /// `dh <= h`.
    pub fn luma_area(
        &self,
        plane: Plane<'_>,
        (w, h): (u32, u32),
        (dw, dh): (u32, u32),
    ) -> Result<LumaImage, CudaError> {
        frames::check_dims(w, h)?;
        frames::check_dims(dw, dh)?;
        if dw > w || dh > h || plane.stride < w as usize {
            return Err(FrameError::Dimensions {
                width: dw,
                height: dh,
                reason: "bad area downscale",
            }
            .into());
        }
        let len = plane.stride * (h as usize - 1) + w as usize;
        if plane.data.len() < len {
            return Err(FrameError::ShortPlane {
                plane: "y",
                len: plane.data.len(),
                needed: len,
                width: w,
                height: h,
            }
            .into());
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let k = self.kernels(st)?;
        let src = Self::upload(st, &plane.data[..len])?;
        let mut out = Self::take(st, dw as usize * dh as usize)?;
        let (s, wi, hi, dwi, dhi) = (
            int(plane.stride),
            int(w as usize),
            int(h as usize),
            int(dw as usize),
            int(dh as usize),
        );
        let mut b = st.stream.launch_builder(&k.area);
        b.arg(&src.0)
            .arg(&s)
            .arg(&wi)
            .arg(&hi)
            .arg(&mut out.0)
            .arg(&dwi)
            .arg(&dhi);
        // SAFETY: reads inside the uploaded plane (stride*(h-1)+w bytes, checked above) and
        // writes dw*dh bytes of `out`, which is at least that large.
        unsafe { b.launch(grid_2d(dw, dh)) }.map_err(driver)?;
        Self::give(st, src);
        let data = Self::download(st, &out, dw as usize * dh as usize);
        Self::give(st, out);
        Ok(LumaImage {
            width: dw,
            height: dh,
            data: data?,
        })
    }

    /// Histogram of both frames and their summed absolute difference, on the device.
    pub fn scene_parts(
        &self,
        a: &LumaImage,
        b: &LumaImage,
    ) -> Result<([u32; 256], [u32; 256], u64), CudaError> {
        if (a.width, a.height) != (b.width, b.height) {
            return Err(FrameError::SizeMismatch(a.width, a.height, b.width, b.height).into());
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let k = self.kernels(st)?;
        if st.hist.is_none() {
            st.hist = Some(st.stream.alloc_zeros::<u32>(256).map_err(driver)?);
        }
        if st.sum.is_none() {
            st.sum = Some(st.stream.alloc_zeros::<u64>(1).map_err(driver)?);
        }
        // As on the CPU: each histogram over its own image, the difference over the shorter.
        let (na, nb) = (a.data.len(), b.data.len());
        let n = na.min(nb);
        let da = Self::upload(st, &a.data)?;
        let db = Self::upload(st, &b.data)?;
        let ni = int(n);
        let mut hists = [[0u32; 256]; 2];
        for ((img, len), out) in [(&da, na), (&db, nb)].into_iter().zip(hists.iter_mut()) {
            let (stream, hist) = (
                st.stream.clone(),
                st.hist
                    .as_mut()
                    .ok_or_else(|| driver("no histogram buffer"))?,
            );
            stream.memset_zeros(hist).map_err(driver)?;
            let mut l = stream.launch_builder(&k.hist);
            let li = int(len);
            l.arg(&img.0).arg(&li).arg(&mut *hist);
            // SAFETY: reads `len` bytes of `img`, which was uploaded from exactly `len` bytes;
            // writes 256 counters.
            unsafe { l.launch(grid_1d(len)) }.map_err(driver)?;
            let v = stream.clone_dtoh(&*hist).map_err(driver)?;
            out.copy_from_slice(&v[..256]);
        }
        let (stream, sum) = (
            st.stream.clone(),
            st.sum.as_mut().ok_or_else(|| driver("no sum buffer"))?,
        );
        stream.memset_zeros(sum).map_err(driver)?;
        let mut l = stream.launch_builder(&k.diff);
        l.arg(&da.0).arg(&db.0).arg(&ni).arg(&mut *sum);
        // SAFETY: reads n = min(len a, len b) bytes of both uploads; writes one u64; block
        // size is 256 as the kernel's shared array requires.
        unsafe { l.launch(grid_1d(n)) }.map_err(driver)?;
        let total = stream.clone_dtoh(&*sum).map_err(driver)?;
        stream.synchronize().map_err(driver)?;
        Self::give(st, da);
        Self::give(st, db);
        Ok((hists[0], hists[1], total.first().copied().unwrap_or(0)))
    }
}
