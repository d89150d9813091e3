/*
 * getOriginalDst(fd): the destination a connection had before iptables REDIRECTed it to the sidecar,
 * read from conntrack with getsockopt(SO_ORIGINAL_DST) as Envoy's original_dst listener filter does.
 * Returns { address, port }, or null when the connection was not redirected (ENOENT: no NAT entry;
 * ENOPROTOOPT: conntrack is not loaded). Any other failure throws an Error whose code is the errno name.
 * Plain node_api.h (N-API version 1 calls only), so one build serves every Node release.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <node_api.h>

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>; both are 80. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char code[32];
  char message[160];
  switch (err) {
  case EBADF: snprintf(code, sizeof code, "EBADF"); break;
  case ENOTSOCK: snprintf(code, sizeof code, "ENOTSOCK"); break;
  case ENOTCONN: snprintf(code, sizeof code, "ENOTCONN"); break;
  case EINVAL: snprintf(code, sizeof code, "EINVAL"); break;
  default: snprintf(code, sizeof code, "ERRNO_%d", err); break;
  }
  snprintf(message, sizeof message, "%s failed: %s (%s)", what, strerror(err), code);
  napi_throw_error(env, code, message);
  return NULL;
}

static napi_value make_result(napi_env env, const char *address, unsigned port) {
  napi_value obj, addr, p;
  if (napi_create_object(env, &obj) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &addr) != napi_ok) return NULL;
  if (napi_create_uint32(env, port, &p) != napi_ok) return NULL;
  if (napi_set_named_property(env, obj, "address", addr) != napi_ok) return NULL;
  if (napi_set_named_property(env, obj, "port", p) != napi_ok) return NULL;
  return obj;
}

static int not_redirected(int err) { return err == ENOENT || err == ENOPROTOOPT; }

static napi_value get_original_dst(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_value nil;
  int32_t fd;
  napi_get_null(env, &nil);
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "getOriginalDst(fd): fd must be a non-negative integer");
    return NULL;
  }

  struct sockaddr_storage local;
  socklen_t local_len = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0) return throw_errno(env, "getsockname", errno);

  char text[INET6_ADDRSTRLEN];
  if (local.ss_family == AF_INET6) {
    struct sockaddr_in6 dst6;
    socklen_t len6 = sizeof dst6;
    memset(&dst6, 0, sizeof dst6);
    if (getsockopt(fd, IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, &dst6, &len6) == 0) {
      if (!inet_ntop(AF_INET6, &dst6.sin6_addr, text, sizeof text)) return throw_errno(env, "inet_ntop", errno);
      return make_result(env, text, ntohs(dst6.sin6_port));
    }
    int err = errno;
    /* A dual-stack socket carrying IPv4 (::ffff:a.b.c.d): conntrack holds it as IPv4. */
    if (!not_redirected(err) || !IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&local)->sin6_addr)) {
      if (not_redirected(err)) return nil;
      return throw_errno(env, "getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)", err);
    }
  } else if (local.ss_family != AF_INET) {
    return nil;
  }

  struct sockaddr_in dst;
  socklen_t len = sizeof dst;
  memset(&dst, 0, sizeof dst);
  if (getsockopt(fd, IPPROTO_IP, SO_ORIGINAL_DST, &dst, &len) != 0) {
    int err = errno;
    if (not_redirected(err)) return nil;
    return throw_errno(env, "getsockopt(SOL_IP, SO_ORIGINAL_DST)", err);
  }
  if (!inet_ntop(AF_INET, &dst.sin_addr, text, sizeof text)) return throw_errno(env, "inet_ntop", errno);
  return make_result(env, text, ntohs(dst.sin_port));
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "getOriginalDst", NAPI_AUTO_LENGTH, get_original_dst, NULL, &fn) != napi_ok)
    return NULL;
  if (napi_set_named_property(env, exports, "getOriginalDst", fn) != napi_ok) return NULL;
  return exports;
}
