//! The binarized, dilated detector map and its contours, as
//! `cv2.findContours(RETR_LIST, CHAIN_APPROX_SIMPLE)` lists them — without
//! tracing borders. DB post-processing only takes each contour's
//! minAreaRect, which depends on the contour's convex hull alone, so a
//! contour here is a point set with that hull:
//! - an outer contour per 8-connected component of foreground pixels; the
//!   first and last pixel of each row run are enough for the hull;
//! - an inner contour per hole, i.e. per 4-connected background component
//!   that does not touch the image border; its border pixels are the
//!   foreground pixels 4-adjacent to the hole (cv2's border follower steps
//!   diagonally past the others), again only run ends are kept.
//!
//! cv2 lists contours in reverse order of where its raster scan finds them,
//! and rapidocr keeps the first `max_candidates`; both are reproduced, so a
//! map with more contours than that keeps the same ones.

/// One contour, reduced to what minAreaRect needs.
#[derive(Debug)]
pub(crate) struct Contour {
    /// A point set whose convex hull is the contour's, pixel coordinates.
    pub points: Vec<[i32; 2]>,
    /// The pixel cv2's scan starts tracing at (x, y).
    pub start: [i32; 2],
    /// Whether this is a hole's (inner) contour.
    pub hole: bool,
}

/// `pred > thresh` (FP32, as NumPy compares), then, if `dilate`,
/// `cv2.dilate` with a 2x2 kernel: OpenCV anchors it at (1, 1), so a pixel is
/// set when it or its left, upper or upper-left neighbour passes.
pub(crate) fn binarize(prob: &[f32], w: usize, h: usize, thresh: f32, dilate: bool) -> Vec<bool> {
    let mut out = vec![false; w * h];
    let mut prev = vec![false; w];
    for y in 0..h {
        let row: Vec<bool> = prob[y * w..(y + 1) * w].iter().map(|&p| p > thresh).collect();
        let dst = &mut out[y * w..(y + 1) * w];
        if dilate {
            for x in 0..w {
                let left = x > 0 && (row[x - 1] || prev[x - 1]);
                dst[x] = row[x] || prev[x] || left;
            }
            prev = row;
        } else {
            dst.copy_from_slice(&row);
        }
    }
    out
}

/// A horizontal run of equal pixels, inclusive ends.
#[derive(Clone, Copy)]
struct Run {
    y: u32,
    x0: u32,
    x1: u32,
}

/// Runs of `value` per row: all runs in raster order and where each row's start.
fn runs(mask: &[bool], w: usize, h: usize, value: bool) -> (Vec<Run>, Vec<usize>) {
    let mut out = Vec::new();
    let mut row_start = Vec::with_capacity(h + 1);
    for y in 0..h {
        row_start.push(out.len());
        let row = &mask[y * w..(y + 1) * w];
        let mut x = 0;
        while x < w {
            if row[x] == value {
                let x0 = x;
                while x < w && row[x] == value {
                    x += 1;
                }
                out.push(Run { y: y as u32, x0: x0 as u32, x1: (x - 1) as u32 });
            } else {
                x += 1;
            }
        }
    }
    row_start.push(out.len());
    (out, row_start)
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let up = parent[parent[i as usize] as usize];
        parent[i as usize] = up;
        i = up;
    }
    i
}

/// Labels runs into components: runs in consecutive rows join when their
/// column ranges, widened by `reach` (1 for 8-connectivity, 0 for 4), meet.
/// Returns each run's component root.
fn label(runs: &[Run], row_start: &[usize], reach: u32) -> Vec<u32> {
    let mut parent: Vec<u32> = (0..runs.len() as u32).collect();
    for y in 1..row_start.len() - 1 {
        let (above, here) = (row_start[y - 1]..row_start[y], row_start[y]..row_start[y + 1]);
        let mut j = above.start;
        for i in here {
            let r = runs[i];
            // Runs above ending left of this one's reach can meet no later run either.
            while j < above.end && runs[j].x1 + reach < r.x0 {
                j += 1;
            }
            let mut k = j;
            while k < above.end && runs[k].x0 <= r.x1 + reach {
                let (a, b) = (find(&mut parent, i as u32), find(&mut parent, k as u32));
                if a != b {
                    parent[a.max(b) as usize] = a.min(b);
                }
                k += 1;
            }
        }
    }
    (0..runs.len() as u32).map(|i| find(&mut parent, i)).collect()
}

/// The contours of `mask` (w x h, row-major) in cv2's order, at most `max`.
pub(crate) fn find_contours(mask: &[bool], w: usize, h: usize, max: usize) -> Vec<Contour> {
    let mut contours = Vec::new();
    let (fg, fg_rows) = runs(mask, w, h, true);
    let fg_root = label(&fg, &fg_rows, 1);
    // Roots are each component's first run in raster order: index them densely.
    let mut slot = vec![usize::MAX; fg.len()];
    for (i, &root) in fg_root.iter().enumerate() {
        let r = fg[i];
        if slot[root as usize] == usize::MAX {
            slot[root as usize] = contours.len();
            contours.push(Contour { points: Vec::new(), start: [r.x0 as i32, r.y as i32], hole: false });
        }
        let points = &mut contours[slot[root as usize]].points;
        points.push([r.x0 as i32, r.y as i32]);
        points.push([r.x1 as i32, r.y as i32]);
    }

    let (bg, bg_rows) = runs(mask, w, h, false);
    let bg_root = label(&bg, &bg_rows, 0);
    let mut touches_border = vec![false; bg.len()];
    for (r, &root) in bg.iter().zip(&bg_root) {
        if r.y == 0 || r.y as usize == h - 1 || r.x0 == 0 || r.x1 as usize == w - 1 {
            touches_border[root as usize] = true;
        }
    }
    let mut hole_slot = vec![usize::MAX; bg.len()];
    for (i, (r, &root)) in bg.iter().zip(&bg_root).enumerate() {
        if touches_border[root as usize] {
            continue;
        }
        if hole_slot[root as usize] == usize::MAX {
            hole_slot[root as usize] = contours.len();
            // cv2 finds a hole at its first pixel's left neighbour.
            contours.push(Contour { points: Vec::new(), start: [r.x0 as i32 - 1, r.y as i32], hole: true });
        }
        debug_assert!(root as usize <= i, "roots are the first run; this is a bug");
        let points = &mut contours[hole_slot[root as usize]].points;
        let y = r.y as i32;
        // Not touching the border, a hole run has foreground on both sides.
        points.push([r.x0 as i32 - 1, y]);
        points.push([r.x1 as i32 + 1, y]);
        // Foreground right above and below the run; background there is the same hole.
        for ny in [r.y as usize - 1, r.y as usize + 1] {
            let row = &fg[fg_rows[ny]..fg_rows[ny + 1]];
            let first = row.partition_point(|f| f.x1 < r.x0);
            for f in row[first..].iter().take_while(|f| f.x0 <= r.x1) {
                points.push([f.x0.max(r.x0) as i32, ny as i32]);
                points.push([f.x1.min(r.x1) as i32, ny as i32]);
            }
        }
    }
    // Reverse raster order of the start pixels; starts are distinct.
    contours.sort_unstable_by(|a, b| (b.start[1], b.start[0]).cmp(&(a.start[1], a.start[0])));
    contours.truncate(max);
    contours
}
