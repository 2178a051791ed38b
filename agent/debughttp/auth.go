package debughttp

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
)

// requireToken lets a request through only with a bearer token the authorizer allows for its path.
func requireToken(next http.Handler, auth Authorizer, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshdoctor"`)
			http.Error(w, "a bearer token is required", http.StatusUnauthorized)
			return
		}
		user, allowed, err := auth.Authorize(r.Context(), token, r.URL.Path)
		switch {
		case err != nil:
			log.Warn("cannot authorise a debug request", "path", r.URL.Path, "err", err)
			http.Error(w, "cannot check the token with the API server", http.StatusServiceUnavailable)
		case user == "":
			http.Error(w, "the token is not valid", http.StatusUnauthorized)
		case !allowed:
			log.Info("debug request denied", "user", user, "path", r.URL.Path)
			http.Error(w, fmt.Sprintf("%s may not get %s", user, r.URL.Path), http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// Reviewer is what KubeAuthorizer asks the API server (kubeapi.Client has it).
type Reviewer interface {
	CreateTokenReview(ctx context.Context, tr *authnv1.TokenReview) (*authnv1.TokenReview, error)
	CreateSubjectAccessReview(ctx context.Context, sar *authzv1.SubjectAccessReview) (*authzv1.SubjectAccessReview, error)
}

// KubeAuthorizer checks tokens with TokenReview and access with SubjectAccessReview (verb get on
// the non-resource URL), caching answers for a minute as kube-rbac-proxy does.
type KubeAuthorizer struct {
	Client Reviewer
	TTL    time.Duration
	mu     sync.Mutex
	cache  map[[2]string]authAnswer
}

type authAnswer struct {
	user    string
	allowed bool
	at      time.Time
}

// Authorize implements Authorizer.
func (k *KubeAuthorizer) Authorize(ctx context.Context, token, path string) (string, bool, error) {
	ttl := k.TTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	key := [2]string{token, authzPath(path)}
	k.mu.Lock()
	if a, ok := k.cache[key]; ok && time.Since(a.at) < ttl {
		k.mu.Unlock()
		return a.user, a.allowed, nil
	}
	k.mu.Unlock()
	tr, err := k.Client.CreateTokenReview(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}})
	if err != nil {
		return "", false, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		return "", false, nil
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := k.Client.CreateSubjectAccessReview(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
			NonResourceAttributes: &authzv1.NonResourceAttributes{Path: key[1], Verb: "get"},
		},
	})
	if err != nil {
		return u.Username, false, fmt.Errorf("subject access review for %s: %w", u.Username, err)
	}
	k.mu.Lock()
	if k.cache == nil || len(k.cache) > 1000 {
		k.cache = map[[2]string]authAnswer{}
	}
	k.cache[key] = authAnswer{user: u.Username, allowed: sar.Status.Allowed, at: time.Now()}
	k.mu.Unlock()
	return u.Username, sar.Status.Allowed, nil
}

// authzPath is the URL a request is authorised for: every pod page is /debug/pods/*, so one RBAC
// rule covers them (nonResourceURLs match a trailing *).
func authzPath(p string) string {
	if strings.HasPrefix(p, "/debug/pods/") {
		return "/debug/pods/*"
	}
	return p
}
