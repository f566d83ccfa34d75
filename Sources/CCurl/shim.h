// libcurl (OpenSSL backend) for FerryNet. Only FerryNet imports this module.
// curl_easy_setopt is variadic, which Swift cannot call: typed forwarders, one per value kind.
#ifndef C_CURL_SHIM_H
#define C_CURL_SHIM_H
#include <curl/curl.h>
static inline CURLcode CCurl_easy_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode CCurl_easy_setopt_string(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode CCurl_easy_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
#endif
