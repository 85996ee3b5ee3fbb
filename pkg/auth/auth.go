// Package auth authenticates gRPC calls by API key and authorizes them by
// role, per method.
//
// A caller presents its key as "authorization: Bearer <key>" or
// "x-api-key: <key>" metadata (the REST gateway forwards both headers). Keys
// map to a principal with one role. Every method a server exposes has an
// entry in the Policy naming the roles allowed to call it; admin may call
// everything; a method without an entry is denied (default deny), except
// the public health and reflection services.
//
// With no keys configured authentication is off and every call acts as an
// anonymous admin; the binary refuses that on a non-loopback address unless
// told --insecure.
package auth

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"sort"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Role is what a principal may do.
type Role string

// Roles.
const (
	// RoleTrader calls the decision path: risk checks, regimes,
	// allocations, predictions.
	RoleTrader Role = "trader"
	// RoleResearcher tracks experiments, registers models, runs A/B tests.
	RoleResearcher Role = "researcher"
	// RoleAdmin may call everything, including limits and kill switches.
	RoleAdmin Role = "admin"
)

// ParseRole validates a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(strings.ToLower(strings.TrimSpace(s))); r {
	case RoleTrader, RoleResearcher, RoleAdmin:
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q (want trader, researcher or admin)", s)
}

// Principal is an authenticated caller.
type Principal struct {
	// Name identifies the caller in logs; never the key itself.
	Name string
	// Role decides what the caller may do.
	Role Role
}

// Anonymous is the principal of every call when authentication is off.
var Anonymous = Principal{Name: "anonymous", Role: RoleAdmin}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal of the call, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// Keys maps API keys (stored as SHA-256 digests) to principals. The zero
// value has no keys: authentication is off.
type Keys struct {
	byDigest map[[32]byte]Principal
}

// Enabled reports whether any key is configured.
func (k Keys) Enabled() bool { return len(k.byDigest) > 0 }

// Len returns the number of keys.
func (k Keys) Len() int { return len(k.byDigest) }

// Add registers key for p.
func (k *Keys) Add(key string, p Principal) error {
	if len(key) < 16 {
		return fmt.Errorf("api key for %q is shorter than 16 characters", p.Name)
	}
	if k.byDigest == nil {
		k.byDigest = map[[32]byte]Principal{}
	}
	d := sha256.Sum256([]byte(key))
	if _, dup := k.byDigest[d]; dup {
		return fmt.Errorf("api key for %q is listed twice", p.Name)
	}
	k.byDigest[d] = p
	return nil
}

// Lookup returns the principal of key.
func (k Keys) Lookup(key string) (Principal, bool) {
	p, ok := k.byDigest[sha256.Sum256([]byte(key))]
	return p, ok
}

// ParseKeys reads keys in the form "key:role[:name]", separated by commas
// or newlines; blank lines and lines starting with # are ignored. The same
// syntax serves the QUANTMESH_API_KEYS variable and the --api-keys-file.
func ParseKeys(text string) (Keys, error) {
	var k Keys
	sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(text, ",", "\n")))
	line := 0
	for sc.Scan() {
		line++
		entry := strings.TrimSpace(sc.Text())
		if entry == "" || strings.HasPrefix(entry, "#") {
			continue
		}
		parts := strings.Split(entry, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return Keys{}, fmt.Errorf("api keys entry %d: want key:role[:name]", line)
		}
		role, err := ParseRole(parts[1])
		if err != nil {
			return Keys{}, fmt.Errorf("api keys entry %d: %w", line, err)
		}
		name := fmt.Sprintf("%s-%d", role, line)
		if len(parts) == 3 && strings.TrimSpace(parts[2]) != "" {
			name = strings.TrimSpace(parts[2])
		}
		if err := k.Add(strings.TrimSpace(parts[0]), Principal{Name: name, Role: role}); err != nil {
			return Keys{}, fmt.Errorf("api keys entry %d: %w", line, err)
		}
	}
	return k, nil
}

// LoadKeys reads keys from a file (when path is not empty) and from inline
// text (the environment), merged.
func LoadKeys(path, inline string) (Keys, error) {
	text := inline
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Keys{}, fmt.Errorf("read api keys file: %w", err)
		}
		text = string(b) + "\n" + inline
	}
	return ParseKeys(text)
}

// Policy maps full method names (/package.Service/Method) to the roles
// allowed to call them. Admin is always allowed.
type Policy map[string][]Role

// Merge adds the entries of other to p.
func (p Policy) Merge(other Policy) {
	for m, roles := range other {
		p[m] = roles
	}
}

// Methods returns the methods of p, sorted.
func (p Policy) Methods() []string {
	out := make([]string, 0, len(p))
	for m := range p {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// publicPrefixes are services anyone may call, authenticated or not.
var publicPrefixes = []string{
	"/grpc.health.v1.Health/",
	"/grpc.reflection.v1.ServerReflection/",
	"/grpc.reflection.v1alpha.ServerReflection/",
}

// IsPublic reports whether method needs no credentials.
func IsPublic(method string) bool {
	for _, p := range publicPrefixes {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}

// Authorizer checks credentials and roles.
type Authorizer struct {
	keys   Keys
	policy Policy
}

// NewAuthorizer returns an authorizer for keys and policy.
func NewAuthorizer(keys Keys, policy Policy) *Authorizer {
	return &Authorizer{keys: keys, policy: policy}
}

// Authorize authenticates the call in ctx for method and returns ctx with
// its principal. Errors are Unauthenticated or PermissionDenied statuses.
func (a *Authorizer) Authorize(ctx context.Context, method string) (context.Context, error) {
	if IsPublic(method) {
		return ctx, nil
	}
	if !a.keys.Enabled() {
		return WithPrincipal(ctx, Anonymous), nil
	}
	key := credential(ctx)
	if key == "" {
		return nil, status.Error(codes.Unauthenticated, "missing credentials: send 'authorization: Bearer <api key>' or 'x-api-key: <api key>'")
	}
	p, ok := a.keys.Lookup(key)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "unknown api key")
	}
	if !a.allowed(method, p.Role) {
		return nil, status.Errorf(codes.PermissionDenied, "role %s may not call %s", p.Role, method)
	}
	return WithPrincipal(ctx, p), nil
}

func (a *Authorizer) allowed(method string, r Role) bool {
	if r == RoleAdmin {
		return true
	}
	for _, allowed := range a.policy[method] {
		if allowed == r {
			return true
		}
	}
	return false
}

func credential(ctx context.Context) string {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ""
	}
	if v := md.Get("authorization"); len(v) > 0 {
		// Authentication schemes are case-insensitive (RFC 7235).
		if scheme, key, ok := strings.Cut(strings.TrimSpace(v[0]), " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(key)
		}
	}
	if v := md.Get("x-api-key"); len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// UnaryServerInterceptor authorizes unary calls.
func (a *Authorizer) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.Authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor authorizes streaming calls.
func (a *Authorizer) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.Authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	}
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// PerRPCKey returns call credentials that send key on every call, for
// service-to-service clients. insecure allows them over plaintext loopback.
func PerRPCKey(key string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(keyCreds(key))
}

type keyCreds string

func (k keyCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (keyCreds) RequireTransportSecurity() bool { return false }
