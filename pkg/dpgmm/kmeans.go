package dpgmm

import (
	"context"
	"math"
	"sort"
)

// k-means as scikit-learn's KMeans(n_clusters=k, n_init=1) runs it for the
// "kmeans" initialisation: greedy k-means++ seeding, then Lloyd iterations
// (at most 300) until the labels stop changing or the centres move less
// than 1e-4 times the mean per-feature variance, with empty clusters
// reseeded at the points farthest from their centres.
const (
	kmeansMaxIter = 300
	kmeansTol     = 1e-4
)

// sqDist is the squared Euclidean distance between a and b.
func sqDist(a, b []float64) float64 {
	b = b[:len(a)]
	s := 0.0
	for i, v := range a {
		t := v - b[i]
		s += t * t
	}
	return s
}

// kmeansPlusPlus returns the indices of k samples of x (n×d, row-major)
// chosen by greedy k-means++ (scikit-learn _kmeans_plusplus): each new centre
// is the best, by resulting potential, of 2 + ⌊ln k⌋ candidates drawn with
// probability proportional to the squared distance to the nearest centre.
func kmeansPlusPlus(x []float64, n, d, k int, r *rng) []int {
	trials := 2 + int(math.Log(float64(k)))
	idx := make([]int, k)
	closest := make([]float64, n)
	cand := make([]float64, trials*n)
	cum := make([]float64, n)
	ids := make([]int, trials)

	idx[0] = r.intn(n)
	c0 := x[idx[0]*d : idx[0]*d+d]
	pot := 0.0
	for i := range n {
		closest[i] = sqDist(x[i*d:i*d+d], c0)
		pot += closest[i]
	}
	for c := 1; c < k; c++ {
		s := 0.0
		for i, v := range closest {
			s += v
			cum[i] = s
		}
		for t := range ids {
			v := r.float64() * pot
			j := sort.SearchFloat64s(cum, v) // first index with cum >= v
			ids[t] = min(j, n-1)
		}
		best, bestPot := 0, math.Inf(1)
		for t, id := range ids {
			row := cand[t*n : (t+1)*n]
			c := x[id*d : id*d+d]
			p := 0.0
			for i := range n {
				row[i] = min(closest[i], sqDist(x[i*d:i*d+d], c))
				p += row[i]
			}
			if p < bestPot {
				best, bestPot = t, p
			}
		}
		pot = bestPot
		copy(closest, cand[best*n:(best+1)*n])
		idx[c] = ids[best]
	}
	return idx
}

// kmeans clusters x (n×d) into k clusters and returns each sample's label.
func kmeans(ctx context.Context, x []float64, n, d, k int, r *rng) ([]int, error) {
	seeds := kmeansPlusPlus(x, n, d, k, r)
	centers := make([]float64, k*d)
	for c, i := range seeds {
		copy(centers[c*d:c*d+d], x[i*d:i*d+d])
	}

	// Tolerance: kmeansTol times the mean per-feature (population) variance.
	tol := 0.0
	for j := range d {
		mean := 0.0
		for i := range n {
			mean += x[i*d+j]
		}
		mean /= float64(n)
		v := 0.0
		for i := range n {
			t := x[i*d+j] - mean
			v += t * t
		}
		tol += v / float64(n)
	}
	tol = tol / float64(d) * kmeansTol

	next := make([]float64, k*d)
	counts := make([]float64, k)
	labels := make([]int, n)
	old := make([]int, n)
	for i := range old {
		old[i] = -1
	}
	strict := false
	for range kmeansMaxIter {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		assign(x, n, d, centers, k, labels)
		clear(next)
		clear(counts)
		for i, l := range labels {
			counts[l]++
			row := next[l*d : l*d+d]
			for j, v := range x[i*d : i*d+d] {
				row[j] += v
			}
		}
		relocateEmpty(x, n, d, centers, labels, next, counts)
		shift := 0.0
		for c := range k {
			row := next[c*d : c*d+d]
			if counts[c] > 0 {
				for j := range row {
					row[j] /= counts[c]
				}
			}
			shift += sqDist(row, centers[c*d:c*d+d])
		}
		centers, next = next, centers
		if equalInts(labels, old) {
			strict = true
			break
		}
		if shift <= tol {
			break
		}
		copy(old, labels)
	}
	if !strict {
		assign(x, n, d, centers, k, labels)
	}
	return labels, nil
}

// assign sets each label to the nearest centre (the lowest index on ties).
func assign(x []float64, n, d int, centers []float64, k int, labels []int) {
	for i := range n {
		xi := x[i*d : i*d+d]
		best, bestD := 0, math.Inf(1)
		for c := range k {
			if dist := sqDist(xi, centers[c*d:c*d+d]); dist < bestD {
				best, bestD = c, dist
			}
		}
		labels[i] = best
	}
}

// relocateEmpty gives each empty cluster the sample farthest from its
// centre (scikit-learn _relocate_empty_clusters_dense): the sample moves
// from its cluster's sums to the empty one's. Labels are not changed.
func relocateEmpty(x []float64, n, d int, centers []float64, labels []int, sums, counts []float64) {
	var empty []int
	for c, w := range counts {
		if w == 0 {
			empty = append(empty, c)
		}
	}
	if len(empty) == 0 {
		return
	}
	order := make([]int, n)
	dist := make([]float64, n)
	for i := range n {
		order[i] = i
		l := labels[i]
		dist[i] = sqDist(x[i*d:i*d+d], centers[l*d:l*d+d])
	}
	sort.SliceStable(order, func(a, b int) bool { return dist[order[a]] > dist[order[b]] })
	for e, c := range empty {
		if e >= n {
			break
		}
		far := order[e]
		from := labels[far]
		xi := x[far*d : far*d+d]
		for j, v := range xi {
			sums[from*d+j] -= v
			sums[c*d+j] = v
		}
		counts[c] = 1
		counts[from]--
	}
}

func equalInts(a, b []int) bool {
	for i, v := range a {
		if b[i] != v {
			return false
		}
	}
	return true
}
