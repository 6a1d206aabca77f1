package bench

import "testing"

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    int64
		wantErr bool
	}{
		{"kernel format", "Name:\thearth-agent\nVmPeak:\t  9000 kB\nVmRSS:\t    4196 kB\nRssAnon:\t 1 kB\n", 4196 << 10, false},
		{"no VmRSS line", "Name:\tkthreadd\nState:\tS (sleeping)\n", 0, true},
		{"garbled value", "VmRSS:\tmany kB\n", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseVmRSS(tc.status)
			if (err != nil) != tc.wantErr {
				t.Fatalf("got error %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %d bytes, want %d", got, tc.want)
			}
		})
	}
}
