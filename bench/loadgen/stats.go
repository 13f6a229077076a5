package main

import (
	"slices"
	"time"
)

// Dist summarises a set of durations, in microseconds.
type Dist struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean_us"`
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
	Max  float64 `json:"max_us"`
}

// summarise sorts ns in place and returns its distribution.
func summarise(ns []int64) Dist {
	if len(ns) == 0 {
		return Dist{}
	}
	slices.Sort(ns)
	var sum float64
	for _, v := range ns {
		sum += float64(v)
	}
	us := func(v int64) float64 { return float64(v) / float64(time.Microsecond) }
	q := func(p float64) float64 {
		i := int(p * float64(len(ns)-1))
		return us(ns[i])
	}
	return Dist{
		N:    len(ns),
		Mean: sum / float64(len(ns)) / float64(time.Microsecond),
		P50:  q(0.50),
		P90:  q(0.90),
		P99:  q(0.99),
		P999: q(0.999),
		Max:  us(ns[len(ns)-1]),
	}
}
