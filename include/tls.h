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
 * The verified peer's identities: its DNS subjectAltNames, or, in a
 * certificate that has none, its subject CN; at most TLS_MAX_NAMES, each
 * a newly allocated string the caller
 * frees (tls_names_free()).  Names with characters outside the host name
 * set are skipped.  Returns the count (0 if the peer is not verified).
 */
int	tls_peer_names(SSL *ssl, char *names[TLS_MAX_NAMES]);
void	tls_names_free(char *names[TLS_MAX_NAMES], int n);

/* An error from bufferevent_get_openssl_error() in words. */
void	tls_error_string(unsigned long e, char *buf, size_t bufsz);

/* The last OpenSSL error as a string (for logs), clearing the queue. */
const char *tls_last_error(void);

#endif
