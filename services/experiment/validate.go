package experiment

import (
	"math"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
)

// Limits on what clients send, MLflow's or stricter.
const (
	maxDescription      = 5000
	maxArtifactLocation = 2048
	maxTagKey           = 250
	maxTagValue         = 5000
	maxTags             = 100
	maxParamValue       = 6000
	maxIdempotencyKey   = 128
)

// validateValue checks a metric value. NaN and infinities are rejected:
// they cannot be ordered, compared in a search or averaged, and MLflow's
// own handling of them differs by backend. A client that needs to record
// "no value" logs nothing for that step.
func validateValue(v *apierr.Violations, field string, x float64) {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		v.Add(field, "must be finite, got %v", x)
	}
}

// validateID checks that id looks like an id this service issues.
func validateID(field, id string) error {
	if id == "" {
		return apierr.Invalid(field, "required")
	}
	if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
		return apierr.Invalid(field, "%q is not a valid id (a UUID such as 0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f)", naming.Truncate(id))
	}
	return nil
}

func validateText(v *apierr.Violations, field, text string, max int) {
	switch {
	case !utf8.ValidString(text):
		v.Add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(text) > max:
		v.Add(field, "must be at most %d characters, got %d", max, utf8.RuneCountInString(text))
	}
}

func validateTags(v *apierr.Violations, field string, tags map[string]string) {
	if len(tags) > maxTags {
		v.Add(field, "at most %d tags, got %d", maxTags, len(tags))
		return
	}
	for k, val := range tags {
		switch {
		case k == "" || isBlank(k):
			v.Add(field, "tag keys must not be empty")
		case utf8.RuneCountInString(k) > maxTagKey:
			v.Add(field+"["+naming.Truncate(k)+"]", "tag key must be at most %d characters", maxTagKey)
		case hasControl(k):
			v.Add(field+"["+naming.Truncate(k)+"]", "tag key must not contain control characters")
		}
		validateText(v, field+"["+naming.Truncate(k)+"]", val, maxTagValue)
	}
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

func isBlank(s string) bool {
	for _, r := range s {
		if !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// maskPaths checks an update mask against the fields an update may change
// and returns the paths it names that are allowed; note ends the message
// about a path that is not.
func maskPaths(v *apierr.Violations, paths, allowed []string, note string) []string {
	if len(paths) == 0 {
		v.Add("update_mask", "must name at least one of %s", strings.Join(allowed, ", "))
		return nil
	}
	ok := make([]string, 0, len(paths))
	for _, p := range paths {
		if !slices.Contains(allowed, p) {
			v.Add("update_mask", "path %q cannot be updated; allowed: %s%s", p, strings.Join(allowed, ", "), note)
			continue
		}
		ok = append(ok, p)
	}
	return ok
}
