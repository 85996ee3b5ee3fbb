// Package page implements the pagination contract shared by every list RPC
// (AIP-158): page_size 0 means the default, a size above the maximum is
// coerced to it, a negative size is invalid; page tokens are opaque cursors
// bound to the query that produced them.
package page

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// Limits are a list's default and maximum page sizes.
type Limits struct {
	Default int
	Max     int
}

// Standard are the limits of most list RPCs.
var Standard = Limits{Default: 100, Max: 1000}

// Size validates a requested page size and applies the limits. field names
// the request field in the error.
func (l Limits) Size(field string, requested int32) (int, error) {
	switch {
	case requested < 0:
		return 0, apierr.Invalid(field, "must not be negative, got %d", requested)
	case requested == 0:
		return l.Default, nil
	case int(requested) > l.Max:
		return l.Max, nil
	default:
		return int(requested), nil
	}
}

// Fingerprint hashes the parts of a query that a page token must not
// outlive (filters, order, view). Pass it to Encode and Decode.
func Fingerprint(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

type token struct {
	Fingerprint string          `json:"f"`
	Cursor      json.RawMessage `json:"c"`
}

// Encode turns a cursor (the sort key of the last item returned) into an
// opaque token bound to fingerprint.
func Encode(fingerprint string, cursor any) (string, error) {
	c, err := json.Marshal(cursor)
	if err != nil {
		return "", fmt.Errorf("page: encode cursor: %w", err)
	}
	b, err := json.Marshal(token{Fingerprint: fingerprint, Cursor: c})
	if err != nil {
		return "", fmt.Errorf("page: encode token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Decode reads a token produced by Encode into cursor. An empty token leaves
// cursor untouched and returns false. A malformed token, or one made for a
// different query, is an invalid-argument error on field.
func Decode(field, tok, fingerprint string, cursor any) (bool, error) {
	if tok == "" {
		return false, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return false, apierr.Invalid(field, "malformed page token")
	}
	var t token
	if err := json.Unmarshal(raw, &t); err != nil || len(t.Cursor) == 0 {
		return false, apierr.Invalid(field, "malformed page token")
	}
	if t.Fingerprint != fingerprint {
		return false, apierr.Invalid(field, "page token was issued for a different query")
	}
	if err := json.Unmarshal(t.Cursor, cursor); err != nil {
		return false, apierr.Invalid(field, "malformed page token")
	}
	return true, nil
}

// Cut trims items, read with one item more than size (to learn whether
// another page follows), to one page and returns the next page's token:
// cursor of the last item kept, encoded for fingerprint, or "" when items
// held size or fewer.
func Cut[T any](items []T, size int, fingerprint string, cursor func(last T) any) ([]T, string, error) {
	if len(items) <= size {
		return items, "", nil
	}
	items = items[:size]
	tok, err := Encode(fingerprint, cursor(items[size-1]))
	return items, tok, err
}
