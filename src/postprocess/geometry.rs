//! Geometry on label images: connected components (8-connected, union-find), Moore contour tracing,
//! and the direct least-squares ellipse fit (Fitzgibbon,
//! Pilu and Fisher 1999, in Halir and Flusser's numerically stable form). Pure functions and
//! buffers; no I/O, no dependencies beyond std.

/// Statistics of one connected component.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Component {
    pub label: u32,
    pub area: usize,
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    sum_x: f64,
    sum_y: f64,
    sum_xx: f64,
    sum_yy: f64,
    sum_xy: f64,
}

impl Component {
    /// Centroid (pixel centres at i + 0.5).
    pub fn centroid(&self) -> (f64, f64) {
        let n = self.area.max(1) as f64;
        (self.sum_x / n + 0.5, self.sum_y / n + 0.5)
    }

    /// Orientation of the principal axis, degrees from the x axis (-90..90), and the ratio of the
    /// principal standard deviations (major / minor, >= 1).
    pub fn orientation(&self) -> (f64, f64) {
        let n = self.area.max(1) as f64;
        let (mx, my) = (self.sum_x / n, self.sum_y / n);
        let cxx = self.sum_xx / n - mx * mx + 1.0 / 12.0;
        let cyy = self.sum_yy / n - my * my + 1.0 / 12.0;
        let cxy = self.sum_xy / n - mx * my;
        let angle = 0.5 * (2.0 * cxy).atan2(cxx - cyy);
        let tr = cxx + cyy;
        let disc = ((cxx - cyy).powi(2) / 4.0 + cxy * cxy).sqrt();
        let (l1, l2) = (tr / 2.0 + disc, (tr / 2.0 - disc).max(1e-9));
        (angle.to_degrees(), (l1 / l2).sqrt())
    }

    /// Length along the principal axis: a uniform thin segment of length L has variance L^2/12
    /// along it.
    pub fn principal_length(&self) -> f64 {
        let n = self.area.max(1) as f64;
        let (mx, my) = (self.sum_x / n, self.sum_y / n);
        let cxx = self.sum_xx / n - mx * mx + 1.0 / 12.0;
        let cyy = self.sum_yy / n - my * my + 1.0 / 12.0;
        let cxy = self.sum_xy / n - mx * my;
        let disc = ((cxx - cyy).powi(2) / 4.0 + cxy * cxy).sqrt();
        (12.0 * ((cxx + cyy) / 2.0 + disc)).sqrt()
    }

    /// Bounding-box width and height.
    pub fn bbox_size(&self) -> (usize, usize) {
        (self.x1 - self.x0 + 1, self.y1 - self.y0 + 1)
    }
}

/// A horizontal run of foreground pixels: row `y`, columns `x0..x1`.
#[derive(Debug, Clone, Copy)]
struct Run {
    y: usize,
    x0: usize,
    x1: usize,
    label: u32,
}

/// Connected-component labelling (8-connected) over runs of foreground pixels, keeping its
/// buffers between frames: runs are found row by row, joined with the overlapping runs of the row
/// above through union-find, then the label image is filled run by run.
#[derive(Debug, Default)]
pub struct Labeller {
    /// Label per pixel, 0 for background, components numbered from 1.
    pub labels: Vec<u32>,
    parent: Vec<u32>,
    runs: Vec<Run>,
    dense: Vec<u32>,
    pub components: Vec<Component>,
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = p;
    }
    x
}

impl Labeller {
    /// Labels the foreground (`mask[i] != 0`) of a `width` x `height` mask, 8-connected.
    pub fn label(&mut self, mask: &[u8], width: usize, height: usize) {
        self.labels.clear();
        self.labels.resize(width * height, 0);
        self.parent.clear();
        self.parent.push(0);
        self.runs.clear();
        let mut prev_start = 0; // first run of the previous row
        for y in 0..height {
            let row = &mask[y * width..(y + 1) * width];
            let row_start = self.runs.len();
            let mut scan = prev_start;
            let mut x = 0;
            while x < width {
                // Skip background quickly.
                match row[x..].iter().position(|&v| v != 0) {
                    Some(off) => x += off,
                    None => break,
                }
                let x0 = x;
                x += row[x..].iter().position(|&v| v == 0).unwrap_or(width - x);
                let label = self.parent.len() as u32;
                self.parent.push(label);
                // 8-connected: runs of the row above overlapping [x0 - 1, x + 1).
                let mut root = label;
                // Runs are sorted by column, so one forward pointer over the row above suffices.
                while scan < row_start && self.runs[scan].x1 + 1 <= x0 {
                    scan += 1;
                }
                for k in scan..row_start {
                    let r = self.runs[k];
                    if r.x0 > x {
                        break;
                    }
                    let a = find(&mut self.parent, r.label);
                    let b = find(&mut self.parent, root);
                    if a != b {
                        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                        self.parent[hi as usize] = lo;
                        root = lo;
                    }
                }
                self.runs.push(Run {
                    y,
                    x0,
                    x1: x,
                    label,
                });
            }
            prev_start = row_start;
        }
        // Dense labels 1..=k and statistics, in closed form per run.
        self.dense.clear();
        self.dense.resize(self.parent.len(), 0);
        self.components.clear();
        for i in 0..self.runs.len() {
            let run = self.runs[i];
            let r = find(&mut self.parent, run.label);
            if self.dense[r as usize] == 0 {
                self.components.push(Component {
                    label: self.components.len() as u32 + 1,
                    x0: usize::MAX,
                    y0: usize::MAX,
                    ..Default::default()
                });
                self.dense[r as usize] = self.components.len() as u32;
            }
            let d = self.dense[r as usize];
            self.labels[run.y * width + run.x0..run.y * width + run.x1].fill(d);
            let c = &mut self.components[d as usize - 1];
            let n = (run.x1 - run.x0) as f64;
            let (a, b) = (run.x0 as f64, (run.x1 - 1) as f64);
            let fy = run.y as f64;
            let sum_x = (a + b) * n / 2.0;
            // Sum of squares of the integers a..=b.
            let sq = |k: f64| k * (k + 1.0) * (2.0 * k + 1.0) / 6.0;
            let sum_xx = sq(b) - if a > 0.0 { sq(a - 1.0) } else { 0.0 };
            c.area += run.x1 - run.x0;
            c.x0 = c.x0.min(run.x0);
            c.x1 = c.x1.max(run.x1 - 1);
            c.y0 = c.y0.min(run.y);
            c.y1 = c.y1.max(run.y);
            c.sum_x += sum_x;
            c.sum_y += fy * n;
            c.sum_xx += sum_xx;
            c.sum_yy += fy * fy * n;
            c.sum_xy += fy * sum_x;
        }
    }
}

/// Traces the outer contour of component `label` (Moore neighbourhood, clockwise in image
/// coordinates) and returns the pixel centres in order.
pub fn trace_contour(
    labels: &[u32],
    width: usize,
    height: usize,
    label: u32,
    c: &Component,
    out: &mut Vec<(usize, usize)>,
) {
    out.clear();
    // Start: first pixel of the component in raster order.
    let mut start = None;
    'find: for y in c.y0..=c.y1 {
        for x in c.x0..=c.x1 {
            if labels[y * width + x] == label {
                start = Some((x, y));
                break 'find;
            }
        }
    }
    let Some(start) = start else { return };
    const DIRS: [(isize, isize); 8] = [
        (1, 0),
        (1, 1),
        (0, 1),
        (-1, 1),
        (-1, 0),
        (-1, -1),
        (0, -1),
        (1, -1),
    ];
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < height
            && labels[y as usize * width + x as usize] == label
    };
    out.push(start);
    let mut cur = start;
    // We arrived at the start from the west (the pixel before it in raster order is outside).
    let mut back = 4usize;
    let max_steps = 4 * (c.area + 4);
    let mut first_move: Option<(usize, usize)> = None;
    for _ in 0..max_steps {
        let mut found = None;
        for k in 1..=8 {
            let d = (back + k) % 8;
            let (nx, ny) = (cur.0 as isize + DIRS[d].0, cur.1 as isize + DIRS[d].1);
            if inside(nx, ny) {
                found = Some((d, (nx as usize, ny as usize)));
                break;
            }
        }
        let Some((d, next)) = found else { break }; // isolated pixel
        if cur == start {
            match first_move {
                None => first_move = Some(next),
                Some(f) if f == next => break, // back at the start, leaving the same way: closed
                Some(_) => {}
            }
        }
        out.push(next);
        cur = next;
        back = (d + 4) % 8;
    }
    // The loop pushes the start again when it closes; drop the duplicate.
    if out.len() > 1 && out.last() == Some(&start) {
        out.pop();
    }
}

/// Length of a closed polyline through pixel centres (steps of 1 or sqrt 2), scaled by (sx, sy).
pub fn contour_length(points: &[(usize, usize)], sx: f64, sy: f64) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..points.len() {
        let (a, b) = (points[i], points[(i + 1) % points.len()]);
        let dx = (a.0 as f64 - b.0 as f64) * sx;
        let dy = (a.1 as f64 - b.1 as f64) * sy;
        total += (dx * dx + dy * dy).sqrt();
    }
    total
}

/// An ellipse: centre, semi-axes (a >= b) and the angle of the a axis from the x axis, degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ellipse {
    pub cx: f64,
    pub cy: f64,
    pub a: f64,
    pub b: f64,
    pub angle_deg: f64,
}

/// Direct least-squares ellipse fit to points. `None` with fewer than 6 points or when no ellipse
/// fits (degenerate, collinear points).
pub fn fit_ellipse(points: &[(f64, f64)]) -> Option<Ellipse> {
    if points.len() < 6 {
        return None;
    }
    // Normalise for conditioning: centre on the mean, scale to unit RMS radius.
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), p| (sx + p.0, sy + p.1));
    let (mx, my) = (mx / n, my / n);
    let s = (points
        .iter()
        .map(|p| (p.0 - mx).powi(2) + (p.1 - my).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    if s <= 0.0 || !s.is_finite() {
        return None;
    }
    let mut s1 = [[0.0f64; 3]; 3];
    let mut s2 = [[0.0f64; 3]; 3];
    let mut s3 = [[0.0f64; 3]; 3];
    for p in points {
        let (x, y) = ((p.0 - mx) / s, (p.1 - my) / s);
        let d1 = [x * x, x * y, y * y];
        let d2 = [x, y, 1.0];
        for i in 0..3 {
            for j in 0..3 {
                s1[i][j] += d1[i] * d1[j];
                s2[i][j] += d1[i] * d2[j];
                s3[i][j] += d2[i] * d2[j];
            }
        }
    }
    let s3_inv = inverse3(&s3)?;
    // T = -S3^-1 S2^T
    let s2t = transpose3(&s2);
    let t = scale3(&mul3(&s3_inv, &s2t), -1.0);
    let m = add3(&s1, &mul3(&s2, &t));
    // Premultiply by C1^-1 = [[0, 0, 1/2], [0, -1, 0], [1/2, 0, 0]].
    let m = [
        [m[2][0] / 2.0, m[2][1] / 2.0, m[2][2] / 2.0],
        [-m[1][0], -m[1][1], -m[1][2]],
        [m[0][0] / 2.0, m[0][1] / 2.0, m[0][2] / 2.0],
    ];
    let mut best: Option<[f64; 3]> = None;
    for lambda in real_eigenvalues3(&m) {
        if let Some(v) = null_vector3(&sub_diag3(&m, lambda)) {
            if 4.0 * v[0] * v[2] - v[1] * v[1] > 0.0 {
                best = Some(v);
                break;
            }
        }
    }
    let a1 = best?;
    let a2 = mul3v(&t, &a1);
    let (a, b, c, d, e, f) = (a1[0], a1[1], a1[2], a2[0], a2[1], a2[2]);
    let den = b * b - 4.0 * a * c;
    if den >= 0.0 {
        return None;
    }
    let x0 = (2.0 * c * d - b * e) / den;
    let y0 = (2.0 * a * e - b * d) / den;
    let f0 = a * x0 * x0 + b * x0 * y0 + c * y0 * y0 + d * x0 + e * y0 + f;
    // Eigen-decomposition of [[a, b/2], [b/2, c]].
    let tr = a + c;
    let disc = (((a - c) / 2.0).powi(2) + (b / 2.0).powi(2)).sqrt();
    let (mu1, mu2) = (tr / 2.0 - disc, tr / 2.0 + disc); // |mu1| <= |mu2| when both share a sign
    let (r1, r2) = ((-f0 / mu1).sqrt(), (-f0 / mu2).sqrt());
    if !(r1.is_finite() && r2.is_finite()) || r1 <= 0.0 || r2 <= 0.0 {
        return None;
    }
    // Eigenvector for mu1: (b/2, mu1 - a) or (mu1 - c, b/2).
    let v = if (b / 2.0).abs() > 1e-12 {
        (b / 2.0, mu1 - a)
    } else if a <= c {
        (1.0, 0.0)
    } else {
        (0.0, 1.0)
    };
    let (major, minor, angle) = if r1 >= r2 {
        (r1, r2, v.1.atan2(v.0))
    } else {
        (r2, r1, v.1.atan2(v.0) + std::f64::consts::FRAC_PI_2)
    };
    let mut angle_deg = angle.to_degrees();
    while angle_deg > 90.0 {
        angle_deg -= 180.0;
    }
    while angle_deg <= -90.0 {
        angle_deg += 180.0;
    }
    Some(Ellipse {
        cx: x0 * s + mx,
        cy: y0 * s + my,
        a: major * s,
        b: minor * s,
        angle_deg,
    })
}

type M3 = [[f64; 3]; 3];

fn mul3(a: &M3, b: &M3) -> M3 {
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    r
}

fn mul3v(a: &M3, v: &[f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| (0..3).map(|k| a[i][k] * v[k]).sum())
}

fn add3(a: &M3, b: &M3) -> M3 {
    let mut r = *a;
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] += b[i][j];
        }
    }
    r
}

fn scale3(a: &M3, s: f64) -> M3 {
    a.map(|row| row.map(|v| v * s))
}

fn transpose3(a: &M3) -> M3 {
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = a[j][i];
        }
    }
    r
}

fn sub_diag3(a: &M3, l: f64) -> M3 {
    let mut r = *a;
    for (i, row) in r.iter_mut().enumerate() {
        row[i] -= l;
    }
    r
}

fn det3(a: &M3) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

fn inverse3(a: &M3) -> Option<M3> {
    let d = det3(a);
    if d.abs() < 1e-300 || !d.is_finite() {
        return None;
    }
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let (i1, i2) = ((j + 1) % 3, (j + 2) % 3);
            let (j1, j2) = ((i + 1) % 3, (i + 2) % 3);
            r[i][j] = (a[i1][j1] * a[i2][j2] - a[i1][j2] * a[i2][j1]) / d;
        }
    }
    Some(r)
}

/// Real roots of the characteristic polynomial of a 3x3 matrix.
fn real_eigenvalues3(a: &M3) -> Vec<f64> {
    let tr = a[0][0] + a[1][1] + a[2][2];
    let c1 = a[0][0] * a[1][1] - a[0][1] * a[1][0] + a[0][0] * a[2][2] - a[0][2] * a[2][0]
        + a[1][1] * a[2][2]
        - a[1][2] * a[2][1];
    let det = det3(a);
    // lambda^3 - tr lambda^2 + c1 lambda - det = 0; depressed with lambda = t + tr/3.
    let p = c1 - tr * tr / 3.0;
    let q = -2.0 * tr.powi(3) / 27.0 + tr * c1 / 3.0 - det;
    let shift = tr / 3.0;
    let disc = (q / 2.0).powi(2) + (p / 3.0).powi(3);
    let mut roots = Vec::with_capacity(3);
    if disc > 0.0 {
        let sq = disc.sqrt();
        roots.push((-q / 2.0 + sq).cbrt() + (-q / 2.0 - sq).cbrt() + shift);
    } else if p.abs() < 1e-300 {
        roots.push(shift);
    } else {
        let r = (-p / 3.0).sqrt();
        let phi = ((-q / 2.0) / r.powi(3)).clamp(-1.0, 1.0).acos();
        for k in 0..3 {
            roots.push(
                2.0 * r * ((phi + 2.0 * std::f64::consts::PI * k as f64) / 3.0).cos() + shift,
            );
        }
    }
    roots
}

/// A vector spanning the null space of a (numerically) rank-2 matrix: the largest cross product
/// of two of its rows.
fn null_vector3(a: &M3) -> Option<[f64; 3]> {
    let cross = |u: &[f64; 3], v: &[f64; 3]| {
        [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ]
    };
    let cands = [
        cross(&a[0], &a[1]),
        cross(&a[0], &a[2]),
        cross(&a[1], &a[2]),
    ];
    let norm = |v: &[f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let best = cands.iter().max_by(|x, y| norm(x).total_cmp(&norm(y)))?;
    let n = norm(best);
    (n > 1e-300 && n.is_finite()).then(|| best.map(|v| v / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipse_fit_recovers_parameters() {
        let (cx, cy, a, b, ang) = (120.5, 80.25, 60.0, 35.0, 25.0f64);
        let pts: Vec<(f64, f64)> = (0..200)
            .map(|i| {
                let t = i as f64 / 200.0 * std::f64::consts::TAU;
                let (x, y) = (a * t.cos(), b * t.sin());
                let r = ang.to_radians();
                (
                    cx + x * r.cos() - y * r.sin(),
                    cy + x * r.sin() + y * r.cos(),
                )
            })
            .collect();
        let e = fit_ellipse(&pts).unwrap();
        assert!(
            (e.cx - cx).abs() < 1e-6 && (e.cy - cy).abs() < 1e-6,
            "{e:?}"
        );
        assert!((e.a - a).abs() < 1e-6 && (e.b - b).abs() < 1e-6, "{e:?}");
        assert!((e.angle_deg - ang).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn components_and_contour_of_a_square() {
        let (w, h) = (10, 8);
        let mut mask = vec![0u8; w * h];
        for y in 2..6 {
            for x in 3..7 {
                mask[y * w + x] = 1;
            }
        }
        mask[0] = 1; // a second, single-pixel component
        let mut l = Labeller::default();
        l.label(&mask, w, h);
        assert_eq!(l.components.len(), 2);
        let sq = l.components.iter().find(|c| c.area == 16).unwrap();
        assert_eq!((sq.x0, sq.y0, sq.x1, sq.y1), (3, 2, 6, 5));
        let mut contour = Vec::new();
        trace_contour(&l.labels, w, h, sq.label, sq, &mut contour);
        assert_eq!(contour.len(), 12, "{contour:?}");
        assert!((contour_length(&contour, 1.0, 1.0) - 12.0).abs() < 1e-9);
    }

    /// Run-based labelling agrees with a plain flood fill on random masks.
    #[test]
    fn labelling_matches_flood_fill() {
        let mut rng = crate::synth::SplitMix64::new(4);
        for _ in 0..200 {
            let (w, h) = (
                1 + (rng.next_u64() % 40) as usize,
                1 + (rng.next_u64() % 30) as usize,
            );
            let density = rng.next_f64();
            let mask: Vec<u8> = (0..w * h)
                .map(|_| (rng.next_f64() < density) as u8)
                .collect();
            let mut l = Labeller::default();
            l.label(&mask, w, h);
            // Flood fill reference.
            let mut seen = vec![false; w * h];
            let mut areas = Vec::new();
            for start in 0..w * h {
                if mask[start] == 0 || seen[start] {
                    continue;
                }
                let (mut stack, mut area) = (vec![start], 0);
                seen[start] = true;
                while let Some(i) = stack.pop() {
                    area += 1;
                    let (x, y) = ((i % w) as isize, (i / w) as isize);
                    for dy in -1..=1 {
                        for dx in -1..=1 {
                            let (nx, ny) = (x + dx, y + dy);
                            if nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h {
                                let j = ny as usize * w + nx as usize;
                                if mask[j] != 0 && !seen[j] {
                                    seen[j] = true;
                                    stack.push(j);
                                }
                            }
                        }
                    }
                    // Every pixel of one flood region carries one label.
                    assert_eq!(l.labels[i], l.labels[start]);
                }
                areas.push(area);
            }
            let mut got: Vec<usize> = l.components.iter().map(|c| c.area).collect();
            got.sort();
            areas.sort();
            assert_eq!(got, areas);
        }
    }

    #[test]
    fn u_shape_is_one_component() {
        // Two arms joined at the bottom: union-find must merge them.
        let (w, h) = (5, 4);
        let mask: Vec<u8> = [1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1].to_vec();
        let mut l = Labeller::default();
        l.label(&mask, w, h);
        assert_eq!(l.components.len(), 1);
        assert_eq!(l.components[0].area, 11);
    }
}
