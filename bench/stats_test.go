package bench

import (
	"testing"
)

func TestSummarize(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100 down to 1, unsorted on purpose
	}
	tests := []struct {
		name    string
		samples []float64
		want    Stats
	}{
		{"empty", nil, Stats{}},
		{"one sample", []float64{7}, Stats{N: 1, Median: 7, P90: 7, P99: 7, Min: 7, Max: 7}},
		{"even count takes lower middle", []float64{4, 1, 3, 2}, Stats{N: 4, Median: 2, P90: 4, P99: 4, Min: 1, Max: 4}},
		{"ten samples", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, Stats{N: 10, Median: 5, P90: 9, P99: 10, Min: 1, Max: 10}},
		{"hundred samples", hundred, Stats{N: 100, Median: 50, P90: 90, P99: 99, Min: 1, Max: 100}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Summarize(tc.samples); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSummarizeKeepsInput(t *testing.T) {
	samples := []float64{3, 1, 2}
	Summarize(samples)
	if samples[0] != 3 || samples[1] != 1 || samples[2] != 2 {
		t.Errorf("got samples %v after Summarize, want them unchanged [3 1 2]", samples)
	}
}
