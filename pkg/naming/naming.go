// Package naming holds the registry's naming rules: ExperimentService
// enforces them, and services that name registry objects check them
// before expensive work, so that both refuse the same names.
package naming

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// MaxName is the longest name, in characters.
const MaxName = 250

// Name checks a free-form name (an experiment's, a run's, a metric, param
// or tag key): Text of at most MaxName characters.
func Name(v *apierr.Violations, field, name string) {
	Text(v, field, name, MaxName)
}

// Text checks a required one-line text: 1 to max characters of valid
// UTF-8, no control characters, not blank.
func Text(v *apierr.Violations, field, text string, max int) {
	switch {
	case text == "":
		v.Add(field, "required")
	case !utf8.ValidString(text):
		v.Add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(text) > max:
		v.Add(field, "must be at most %d characters, got %d", max, utf8.RuneCountInString(text))
	case strings.IndexFunc(text, unicode.IsControl) >= 0:
		v.Add(field, "must not contain control characters")
	case strings.TrimFunc(text, unicode.IsSpace) == "":
		v.Add(field, "must not be blank")
	}
}

// ModelName checks a registered model's name: 1 to MaxName ASCII
// letters, digits, '-', '_' and '.', and not "." or ".." (path segments
// that HTTP clients resolve away in REST URLs).
func ModelName(v *apierr.Violations, field, name string) {
	if name == "" {
		v.Add(field, "required")
		return
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			v.Add(field, "%q may hold only letters, digits, '-', '_' and '.'", Truncate(name))
			return
		}
	}
	switch {
	case len(name) > MaxName:
		v.Add(field, "must be at most %d characters, got %d", MaxName, len(name))
	case name == "." || name == "..":
		v.Add(field, "must not be %q", name)
	}
}

// Alias checks an alias: 1 to MaxName lowercase letters, digits, '-' and
// '_'; "latest" and v<digits> are reserved (they would read as a version).
func Alias(v *apierr.Violations, field, alias string) {
	if alias == "" {
		v.Add(field, "required")
		return
	}
	for _, r := range alias {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			v.Add(field, "%q may hold only lowercase letters, digits, '-' and '_'", Truncate(alias))
			return
		}
	}
	switch {
	case len(alias) > MaxName:
		v.Add(field, "must be at most %d characters, got %d", MaxName, len(alias))
	case alias == "latest" || isVersionName(alias):
		v.Add(field, "%q is reserved (latest and v<digits> name versions)", alias)
	}
}

func isVersionName(s string) bool {
	return len(s) >= 2 && s[0] == 'v' && strings.Trim(s[1:], "0123456789") == ""
}

// Truncate shortens a value quoted in an error to 40 characters.
func Truncate(s string) string {
	const n = 40
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}
