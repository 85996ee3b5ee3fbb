package page

import (
	"errors"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

func TestSize(t *testing.T) {
	t.Parallel()
	l := Limits{Default: 100, Max: 1000}
	tests := []struct {
		in      int32
		want    int
		wantErr bool
	}{
		{in: 0, want: 100},
		{in: 1, want: 1},
		{in: 1000, want: 1000},
		{in: 1001, want: 1000},
		{in: -1, wantErr: true},
	}
	for _, tt := range tests {
		got, err := l.Size("page_size", tt.in)
		if tt.wantErr {
			var inv *apierr.InvalidError
			if !errors.As(err, &inv) || inv.Violations[0].Field != "page_size" {
				t.Errorf("Size(%d) error = %v, want invalid page_size", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Size(%d) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	type cursor struct {
		T  int64  `json:"t"`
		ID string `json:"id"`
	}
	fp := Fingerprint("view=ACTIVE")
	tok, err := Encode(fp, cursor{T: 42, ID: "abc"})
	if err != nil {
		t.Fatal(err)
	}
	var got cursor
	ok, err := Decode("page_token", tok, fp, &got)
	if err != nil || !ok || got != (cursor{T: 42, ID: "abc"}) {
		t.Fatalf("Decode = %v, %v, %+v", ok, err, got)
	}

	if ok, err := Decode("page_token", "", fp, &got); ok || err != nil {
		t.Errorf("empty token: ok=%v err=%v", ok, err)
	}
	for _, bad := range []string{"!!!", "bm90IGpzb24", tok + "x"} {
		if _, err := Decode("page_token", bad, fp, &got); !errors.Is(err, apierr.ErrInvalidArgument) {
			t.Errorf("Decode(%q) error = %v, want invalid argument", bad, err)
		}
	}
	if _, err := Decode("page_token", tok, Fingerprint("view=ALL"), &got); !errors.Is(err, apierr.ErrInvalidArgument) {
		t.Errorf("token reused with another query: error = %v, want invalid argument", err)
	}
}
