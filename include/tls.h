/*
 * tls.h — TLS 1.3 contexts with mutual certificate authentication, and
 * the identity of the peer (its certificate's CN and DNS SANs).
 */
#ifndef REPLICAD_TLS_H
#define REPLICAD_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#define TLS_MAX_NAMES	16

/*
 * A context for the server (replica) or client (primary) role: TLS 1.3
 * only, peer certificate required and verified against ca.  On failure
 * returns NULL and writes a one-line reason (naming the file) into err.
 */
SSL_CTX	*tls_ctx_new(int server, const char *cert, const char *key,
	    const char *ca, char *err, size_t errsz);

/*
 * A connection on ctx.  expect: the identity the peer's certificate must
 * carry (a host name, or an IP address), NULL to take any the CA signed.
 * NULL on failure.
 */
SSL	*tls_ssl_new(SSL_CTX *ctx, const char *expect);

/*
 * The identity rule of both sides (RFC 6125): a certificate's identities
 * are its DNS subjectAltNames, or, in a certificate that has none, its
 * subject CN; at most TLS_MAX_NAMES, each a newly allocated string the
 * caller frees (tls_names_free()).  Names with characters outside the
 * host name set are skipped; there are no wildcards.  Returns the count.
 */
int	tls_cert_names(X509 *x, char *names[TLS_MAX_NAMES]);
/* Whether x carries name (case-insensitive) under that rule. */
int	tls_cert_has_name(X509 *x, const char *name);
/* "a, b; its CN c does not count, as it has DNS names", for messages. */
void	tls_cert_describe(X509 *x, char *buf, size_t bufsz);
/* The verified peer's identities (tls_cert_names()); 0 if unverified. */
int	tls_peer_names(SSL *ssl, char *names[TLS_MAX_NAMES]);
void	tls_names_free(char *names[TLS_MAX_NAMES], int n);

/*
 * Why a handshake on ssl failed, e being the error libevent kept: the
 * peer's certificate expired, not yet valid, from an unknown CA, or not
 * naming what was expected (naming both), or the alert the peer sent.
 * 1 if buf says, 0 if TLS has nothing to say (see errno instead).
 */
int	tls_why(SSL *ssl, unsigned long e, char *buf, size_t bufsz);

/* An error from bufferevent_get_openssl_error() in words. */
void	tls_error_string(unsigned long e, char *buf, size_t bufsz);

/* The last OpenSSL error as a string (for logs), clearing the queue. */
const char *tls_last_error(void);

#endif
