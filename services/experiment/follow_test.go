package experiment_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/registryclient"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// registryclient.FollowAlias against a server that is stopped and started
// again where its client expects it, while the alias moves twice.
func TestFollowAliasAcrossRestart(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		followed := serveRegistry(t, db, "127.0.0.1:0")
		admin := serveRegistry(t, db, "127.0.0.1:0") // stays up
		mustModel(t, admin.client, "policy")
		for _, v := range []string{"v1", "v2", "v3"} {
			mustVersion(t, admin.client, "policy", weightsOf(v))
		}
		r1 := setAlias(t, admin.client, "policy", "production", 1)

		client := experimentv1.NewExperimentServiceClient(dial(t, followed.addr))
		applied := make(chan *experimentv1.WatchModelResponse, 16)
		retried := make(chan error, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- registryclient.FollowAlias(ctx, client, "policy", "production",
				func(msg *experimentv1.WatchModelResponse) error {
					applied <- msg
					return nil
				},
				registryclient.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
				registryclient.OnRetry(func(err error, _ time.Duration) {
					select {
					case retried <- err:
					default:
					}
				}))
		}()
		next := func() *experimentv1.WatchModelResponse {
			t.Helper()
			select {
			case msg := <-applied:
				return msg
			case err := <-done:
				t.Fatalf("FollowAlias returned: %v", err)
			case <-time.After(streamGuard):
				t.Fatal("nothing applied")
			}
			return nil
		}

		wantVersion(t, next(), "production", 1, weightsOf("v1"), r1)
		followed.stop()
		select {
		case err := <-retried:
			if status.Code(err) != codes.Unavailable {
				t.Errorf("the stream ended with %v, want Unavailable", err)
			}
		case <-time.After(streamGuard):
			t.Fatal("the follower did not notice the server stop")
		}
		setAlias(t, admin.client, "policy", "production", 2)
		r3 := setAlias(t, admin.client, "policy", "production", 3)
		serveRegistry(t, db, followed.addr) // back where the client expects it

		wantVersion(t, next(), "production", 3, weightsOf("v3"), r3)
		r4 := setAlias(t, admin.client, "policy", "production", 1)
		wantVersion(t, next(), "production", 1, weightsOf("v1"), r4)

		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("FollowAlias after cancel: %v, want context.Canceled", err)
		}
	})
}
