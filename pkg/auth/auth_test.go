package auth_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
)

const (
	traderKey     = "trader-key-0123456789"
	researcherKey = "researcher-key-0123456789"
	adminKey      = "admin-key-0123456789abc"
)

func mustParseKeys(t *testing.T, text string) auth.Keys {
	t.Helper()
	k, err := auth.ParseKeys(text)
	if err != nil {
		t.Fatalf("ParseKeys: %v", err)
	}
	return k
}

func lookup(t *testing.T, k auth.Keys, key string) auth.Principal {
	t.Helper()
	p, ok := k.Lookup(key)
	if !ok {
		t.Fatalf("Lookup(%q) found nothing", key)
	}
	return p
}

func TestParseRole(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    auth.Role
		wantErr bool
	}{
		{in: "trader", want: auth.RoleTrader},
		{in: "researcher", want: auth.RoleResearcher},
		{in: "admin", want: auth.RoleAdmin},
		{in: " Admin ", want: auth.RoleAdmin},
		{in: "TRADER", want: auth.RoleTrader},
		{in: "root", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := auth.ParseRole(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseRole(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		text string
		want map[string]auth.Principal // key -> principal
	}{
		{
			name: "empty text disables authentication",
			text: "",
			want: map[string]auth.Principal{},
		},
		{
			name: "one entry with a name",
			text: traderKey + ":trader:desk-1",
			want: map[string]auth.Principal{traderKey: {Name: "desk-1", Role: auth.RoleTrader}},
		},
		{
			name: "comma separated, spaces and case in the role",
			text: traderKey + ":trader:desk-1, " + adminKey + " : ADMIN :ops",
			want: map[string]auth.Principal{
				traderKey: {Name: "desk-1", Role: auth.RoleTrader},
				adminKey:  {Name: "ops", Role: auth.RoleAdmin},
			},
		},
		{
			name: "newlines, comments, blank lines and CRLF",
			text: "# quantmesh keys\r\n\r\n" + traderKey + ":trader:desk-1\r\n   # indented comment\n\n" + researcherKey + ":researcher:lab\n",
			want: map[string]auth.Principal{
				traderKey:     {Name: "desk-1", Role: auth.RoleTrader},
				researcherKey: {Name: "lab", Role: auth.RoleResearcher},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k := mustParseKeys(t, tt.text)
			if k.Len() != len(tt.want) || k.Enabled() != (len(tt.want) > 0) {
				t.Errorf("Len() = %d, Enabled() = %v; want %d keys", k.Len(), k.Enabled(), len(tt.want))
			}
			got := map[string]auth.Principal{}
			for key := range tt.want {
				if p, ok := k.Lookup(key); ok {
					got[key] = p
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("principals mismatch (-want +got):\n%s", diff)
			}
			if _, ok := k.Lookup("not-a-configured-key-at-all"); ok {
				t.Error("Lookup of an unknown key succeeded")
			}
		})
	}
}

// A key without a name gets one that identifies it in logs without being
// the key: not empty, distinct per key, never containing the key.
func TestParseKeysDefaultName(t *testing.T) {
	t.Parallel()
	k := mustParseKeys(t, traderKey+":trader\n"+researcherKey+":researcher:\n"+adminKey+":admin")
	seen := map[string]string{}
	for _, key := range []string{traderKey, researcherKey, adminKey} {
		p := lookup(t, k, key)
		if p.Name == "" || strings.Contains(p.Name, key) {
			t.Errorf("default name for %s key = %q, want a non-empty name without the key", p.Role, p.Name)
		}
		if other, dup := seen[p.Name]; dup {
			t.Errorf("keys %q and %q share the default name %q", other, key, p.Name)
		}
		seen[p.Name] = key
	}
	if p := lookup(t, k, researcherKey); p.Role != auth.RoleResearcher {
		t.Errorf("role = %q, want researcher", p.Role)
	}
}

func TestParseKeysErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		text      string
		wantEntry string // the entry the error must point at
		secret    string // must not appear in the error
	}{
		{"unknown role", "# c\n" + traderKey + ":superuser:x", "entry 2", traderKey},
		{"short key", "short-key:trader:desk", "entry 1", "short-key"},
		{"empty key", ":trader:desk", "entry 1", ""},
		{"duplicate key", traderKey + ":trader:a," + traderKey + ":admin:b", "entry 2", traderKey},
		{"missing role", traderKey, "entry 1", traderKey},
		{"too many parts", traderKey + ":trader:desk:extra", "entry 1", traderKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := auth.ParseKeys(tt.text)
			if err == nil {
				t.Fatalf("ParseKeys(%q) = %d keys, want an error", tt.text, k.Len())
			}
			if !strings.Contains(err.Error(), tt.wantEntry) {
				t.Errorf("error %q does not name %s", err, tt.wantEntry)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q leaks the key", err)
			}
			if k.Enabled() {
				t.Error("keys enabled after a parse error")
			}
		})
	}
}

func TestLoadKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	if err := os.WriteFile(file, []byte("# file keys\n"+traderKey+":trader:desk\n"+researcherKey+":researcher:lab\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file without a trailing newline must not glue its last entry to
	// the first inline one.
	noNewline := filepath.Join(dir, "keys-no-newline")
	if err := os.WriteFile(noNewline, []byte(traderKey+":trader:desk"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		path   string
		inline string
		want   map[string]auth.Principal
	}{
		{
			name:   "inline only",
			inline: adminKey + ":admin:ops",
			want:   map[string]auth.Principal{adminKey: {Name: "ops", Role: auth.RoleAdmin}},
		},
		{
			name: "file only",
			path: file,
			want: map[string]auth.Principal{
				traderKey:     {Name: "desk", Role: auth.RoleTrader},
				researcherKey: {Name: "lab", Role: auth.RoleResearcher},
			},
		},
		{
			name:   "file and inline merged",
			path:   file,
			inline: adminKey + ":admin:ops",
			want: map[string]auth.Principal{
				traderKey:     {Name: "desk", Role: auth.RoleTrader},
				researcherKey: {Name: "lab", Role: auth.RoleResearcher},
				adminKey:      {Name: "ops", Role: auth.RoleAdmin},
			},
		},
		{
			name:   "file without trailing newline and inline",
			path:   noNewline,
			inline: adminKey + ":admin:ops",
			want: map[string]auth.Principal{
				traderKey: {Name: "desk", Role: auth.RoleTrader},
				adminKey:  {Name: "ops", Role: auth.RoleAdmin},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := auth.LoadKeys(tt.path, tt.inline)
			if err != nil {
				t.Fatalf("LoadKeys: %v", err)
			}
			got := map[string]auth.Principal{}
			for _, key := range []string{traderKey, researcherKey, adminKey} {
				if p, ok := k.Lookup(key); ok {
					got[key] = p
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("principals mismatch (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("same key in file and inline", func(t *testing.T) {
		t.Parallel()
		if _, err := auth.LoadKeys(file, traderKey+":admin:sneaky"); err == nil {
			t.Error("LoadKeys accepted a key listed in the file and inline")
		}
	})
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		_, err := auth.LoadKeys(filepath.Join(dir, "absent"), adminKey+":admin")
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("LoadKeys(missing file) error = %v, want one wrapping os.ErrNotExist", err)
		}
	})
}

func TestKeysZeroValue(t *testing.T) {
	t.Parallel()
	var k auth.Keys
	if k.Enabled() || k.Len() != 0 {
		t.Errorf("zero Keys: Enabled() = %v, Len() = %d", k.Enabled(), k.Len())
	}
	if _, ok := k.Lookup(traderKey); ok {
		t.Error("zero Keys: Lookup succeeded")
	}
	if err := k.Add(traderKey, auth.Principal{Name: "desk", Role: auth.RoleTrader}); err != nil {
		t.Fatalf("Add on zero Keys: %v", err)
	}
	if p := lookup(t, k, traderKey); p.Name != "desk" {
		t.Errorf("Lookup after Add = %+v", p)
	}
}

const (
	readMethod  = "/quantmesh.test.v1.TestService/Read"
	writeMethod = "/quantmesh.test.v1.TestService/Write"
	adminMethod = "/quantmesh.test.v1.TestService/SetLimits"
)

func testPolicy() auth.Policy {
	return auth.Policy{
		readMethod:  {auth.RoleTrader, auth.RoleResearcher},
		writeMethod: {auth.RoleResearcher},
		adminMethod: nil, // admin only
	}
}

func testKeys(t *testing.T) auth.Keys {
	return mustParseKeys(t, traderKey+":trader:desk,"+researcherKey+":researcher:lab,"+adminKey+":admin:ops")
}

func incoming(kv ...string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
}

func TestAuthorize(t *testing.T) {
	t.Parallel()
	desk := auth.Principal{Name: "desk", Role: auth.RoleTrader}
	lab := auth.Principal{Name: "lab", Role: auth.RoleResearcher}
	ops := auth.Principal{Name: "ops", Role: auth.RoleAdmin}

	tests := []struct {
		name     string
		disabled bool // no keys configured
		ctx      context.Context
		method   string
		wantCode codes.Code
		// wantPrincipal is the principal in the returned context; nil
		// means none.
		wantPrincipal *auth.Principal
	}{
		{name: "health needs no credentials", ctx: context.Background(), method: "/grpc.health.v1.Health/Check", wantCode: codes.OK},
		{name: "health watch needs no credentials", ctx: context.Background(), method: "/grpc.health.v1.Health/Watch", wantCode: codes.OK},
		{name: "reflection v1 needs no credentials", ctx: context.Background(), method: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", wantCode: codes.OK},
		{name: "reflection v1alpha needs no credentials", ctx: context.Background(), method: "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", wantCode: codes.OK},
		{name: "public method with a bad key is still allowed", ctx: incoming("x-api-key", "nope-nope-nope-nope"), method: "/grpc.health.v1.Health/Check", wantCode: codes.OK},
		{name: "a lookalike of a public service is not public", ctx: context.Background(), method: "/grpc.health.v1.HealthX/Check", wantCode: codes.Unauthenticated},

		{name: "keys disabled: anonymous admin", disabled: true, ctx: context.Background(), method: adminMethod, wantCode: codes.OK, wantPrincipal: &auth.Anonymous},
		{name: "keys disabled: unlisted method allowed", disabled: true, ctx: context.Background(), method: "/quantmesh.test.v1.TestService/Unlisted", wantCode: codes.OK, wantPrincipal: &auth.Anonymous},

		{name: "no metadata", ctx: context.Background(), method: readMethod, wantCode: codes.Unauthenticated},
		{name: "metadata without credentials", ctx: incoming("user-agent", "test"), method: readMethod, wantCode: codes.Unauthenticated},
		{name: "unknown bearer key", ctx: incoming("authorization", "Bearer unknown-key-0123456789"), method: readMethod, wantCode: codes.Unauthenticated},
		{name: "unknown x-api-key", ctx: incoming("x-api-key", "unknown-key-0123456789"), method: readMethod, wantCode: codes.Unauthenticated},
		{name: "authorization with another scheme", ctx: incoming("authorization", "Basic "+traderKey), method: readMethod, wantCode: codes.Unauthenticated},
		{name: "bare key in authorization", ctx: incoming("authorization", traderKey), method: readMethod, wantCode: codes.Unauthenticated},

		{name: "bearer key", ctx: incoming("authorization", "Bearer "+traderKey), method: readMethod, wantCode: codes.OK, wantPrincipal: &desk},
		{name: "bearer key with surrounding spaces", ctx: incoming("authorization", "Bearer   "+traderKey+" "), method: readMethod, wantCode: codes.OK, wantPrincipal: &desk},
		// RFC 7235 section 2.1: the authentication scheme is case-insensitive.
		{name: "bearer scheme in lower case", ctx: incoming("authorization", "bearer "+traderKey), method: readMethod, wantCode: codes.OK, wantPrincipal: &desk},
		{name: "x-api-key", ctx: incoming("x-api-key", researcherKey), method: readMethod, wantCode: codes.OK, wantPrincipal: &lab},
		{name: "x-api-key beside another authorization scheme", ctx: incoming("authorization", "Basic Zm9vOmJhcg==", "x-api-key", researcherKey), method: readMethod, wantCode: codes.OK, wantPrincipal: &lab},

		{name: "trader may read", ctx: incoming("x-api-key", traderKey), method: readMethod, wantCode: codes.OK, wantPrincipal: &desk},
		{name: "trader may not write", ctx: incoming("x-api-key", traderKey), method: writeMethod, wantCode: codes.PermissionDenied},
		{name: "researcher may write", ctx: incoming("x-api-key", researcherKey), method: writeMethod, wantCode: codes.OK, wantPrincipal: &lab},
		{name: "researcher may not call an admin-only method", ctx: incoming("x-api-key", researcherKey), method: adminMethod, wantCode: codes.PermissionDenied},
		{name: "admin may call an admin-only method", ctx: incoming("x-api-key", adminKey), method: adminMethod, wantCode: codes.OK, wantPrincipal: &ops},
		{name: "admin may call a write method", ctx: incoming("authorization", "Bearer "+adminKey), method: writeMethod, wantCode: codes.OK, wantPrincipal: &ops},
		{name: "admin may call an unlisted method", ctx: incoming("x-api-key", adminKey), method: "/quantmesh.test.v1.TestService/Unlisted", wantCode: codes.OK, wantPrincipal: &ops},
		{name: "unlisted method is denied", ctx: incoming("x-api-key", researcherKey), method: "/quantmesh.test.v1.TestService/Unlisted", wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			keys := testKeys(t)
			if tt.disabled {
				keys = auth.Keys{}
			}
			a := auth.NewAuthorizer(keys, testPolicy())
			ctx, err := a.Authorize(tt.ctx, tt.method)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("Authorize(%s) code = %v (%v), want %v", tt.method, got, err, tt.wantCode)
			}
			if err != nil {
				if _, ok := status.FromError(err); !ok {
					t.Errorf("error %v is not a gRPC status", err)
				}
				return
			}
			p, ok := auth.FromContext(ctx)
			switch {
			case tt.wantPrincipal == nil && ok:
				t.Errorf("principal = %+v, want none", p)
			case tt.wantPrincipal != nil && !ok:
				t.Errorf("no principal, want %+v", *tt.wantPrincipal)
			case tt.wantPrincipal != nil && p != *tt.wantPrincipal:
				t.Errorf("principal = %+v, want %+v", p, *tt.wantPrincipal)
			}
		})
	}
}

// Error messages tell the caller what to do but never echo the key.
func TestAuthorizeErrorsDoNotEchoKeys(t *testing.T) {
	t.Parallel()
	a := auth.NewAuthorizer(testKeys(t), testPolicy())
	unknown := "unknown-key-0123456789"
	for _, ctx := range []context.Context{
		incoming("x-api-key", unknown),
		incoming("authorization", "Bearer "+unknown),
		incoming("x-api-key", traderKey),
	} {
		_, err := a.Authorize(ctx, writeMethod)
		if err == nil {
			t.Fatal("Authorize succeeded, want an error")
		}
		for _, key := range []string{unknown, traderKey} {
			if strings.Contains(err.Error(), key) {
				t.Errorf("error %q echoes the key", err)
			}
		}
	}
}

func TestFromContext(t *testing.T) {
	t.Parallel()
	if p, ok := auth.FromContext(context.Background()); ok {
		t.Errorf("FromContext(empty) = %+v, true", p)
	}
	want := auth.Principal{Name: "lab", Role: auth.RoleResearcher}
	if got, ok := auth.FromContext(auth.WithPrincipal(context.Background(), want)); !ok || got != want {
		t.Errorf("FromContext = %+v, %v; want %+v", got, ok, want)
	}
}

type fakeServerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *fakeServerStream) Context() context.Context { return s.ctx }

func TestInterceptors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		ctx           context.Context
		method        string
		wantCode      codes.Code
		wantPrincipal auth.Principal
	}{
		{name: "allowed", ctx: incoming("x-api-key", traderKey), method: readMethod, wantCode: codes.OK, wantPrincipal: auth.Principal{Name: "desk", Role: auth.RoleTrader}},
		{name: "denied", ctx: incoming("x-api-key", traderKey), method: writeMethod, wantCode: codes.PermissionDenied},
		{name: "unauthenticated", ctx: context.Background(), method: readMethod, wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := auth.NewAuthorizer(testKeys(t), testPolicy())

			t.Run("unary", func(t *testing.T) {
				t.Parallel()
				called := false
				handler := func(ctx context.Context, req any) (any, error) {
					called = true
					p, _ := auth.FromContext(ctx)
					if p != tt.wantPrincipal {
						t.Errorf("handler principal = %+v, want %+v", p, tt.wantPrincipal)
					}
					return req, nil
				}
				resp, err := a.UnaryServerInterceptor()(tt.ctx, "req", &grpc.UnaryServerInfo{FullMethod: tt.method}, handler)
				if got := status.Code(err); got != tt.wantCode {
					t.Fatalf("code = %v (%v), want %v", got, err, tt.wantCode)
				}
				if called != (tt.wantCode == codes.OK) {
					t.Errorf("handler called = %v, want %v", called, tt.wantCode == codes.OK)
				}
				if err == nil && resp != "req" {
					t.Errorf("resp = %v, want the handler's", resp)
				}
			})

			t.Run("stream", func(t *testing.T) {
				t.Parallel()
				called := false
				handler := func(_ any, ss grpc.ServerStream) error {
					called = true
					p, _ := auth.FromContext(ss.Context())
					if p != tt.wantPrincipal {
						t.Errorf("handler principal = %+v, want %+v", p, tt.wantPrincipal)
					}
					// Values of the original context stay visible.
					if _, ok := metadata.FromIncomingContext(ss.Context()); !ok {
						t.Error("stream context lost the incoming metadata")
					}
					return nil
				}
				info := &grpc.StreamServerInfo{FullMethod: tt.method, IsServerStream: true}
				err := a.StreamServerInterceptor()(nil, &fakeServerStream{ctx: tt.ctx}, info, handler)
				if got := status.Code(err); got != tt.wantCode {
					t.Fatalf("code = %v (%v), want %v", got, err, tt.wantCode)
				}
				if called != (tt.wantCode == codes.OK) {
					t.Errorf("handler called = %v, want %v", called, tt.wantCode == codes.OK)
				}
			})
		})
	}
}

// whoAmI answers GetExperiment with the caller's principal as the name.
type whoAmI struct {
	experimentv1.UnimplementedExperimentServiceServer
}

func (whoAmI) GetExperiment(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
	p, _ := auth.FromContext(ctx)
	return &experimentv1.GetExperimentResponse{Experiment: &experimentv1.Experiment{
		ExperimentId: req.GetExperimentId(),
		Name:         p.Name + "/" + string(p.Role),
	}}, nil
}

// PerRPCKey sends credentials the Authorizer accepts, over a real gRPC
// connection, and health stays public.
func TestPerRPCKeyEndToEnd(t *testing.T) {
	t.Parallel()
	lis := bufconn.Listen(1 << 20)
	a := auth.NewAuthorizer(testKeys(t), auth.Policy{
		experimentv1.ExperimentService_GetExperiment_FullMethodName: {auth.RoleResearcher},
	})
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor()))
	experimentv1.RegisterExperimentServiceServer(srv, whoAmI{})
	healthpb.RegisterHealthServer(srv, healthServer{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	dial := func(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
		t.Helper()
		opts = append(opts,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		conn, err := grpc.NewClient("passthrough:///bufnet", opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	tests := []struct {
		name     string
		opts     []grpc.DialOption
		wantCode codes.Code
		wantName string
	}{
		{name: "researcher key", opts: []grpc.DialOption{auth.PerRPCKey(researcherKey)}, wantCode: codes.OK, wantName: "lab/researcher"},
		{name: "admin key", opts: []grpc.DialOption{auth.PerRPCKey(adminKey)}, wantCode: codes.OK, wantName: "ops/admin"},
		{name: "trader key is denied", opts: []grpc.DialOption{auth.PerRPCKey(traderKey)}, wantCode: codes.PermissionDenied},
		{name: "no key", wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn := dial(t, tt.opts...)
			resp, err := experimentv1.NewExperimentServiceClient(conn).GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "e1"})
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("GetExperiment code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if got := resp.GetExperiment().GetName(); got != tt.wantName {
				t.Errorf("principal seen by the handler = %q, want %q", got, tt.wantName)
			}
			if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
				t.Errorf("health Check: %v", err)
			}
		})
	}
}

type healthServer struct {
	healthpb.UnimplementedHealthServer
}

func (healthServer) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}
