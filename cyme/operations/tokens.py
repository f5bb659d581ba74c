"""The token operations of the API (admin scope): make, list, revoke, check.

L{LocalTokens} is the part of L{cyme.operations.local.LocalOperations}
that works on this branch's store; L{ClusterTokens}, the part of
L{cyme.operations.cluster.ClusterOperations}, sends each change to every
live branch before answering, as it does for apps.  The secret of a new
token is in the answer to its creation and nowhere else: the store keeps
its hash (L{cyme.state.tokens}).
"""

from cyme.errors import Conflict, NotFound
from cyme.state.models import check_name
from cyme.state.tokens import Token, check_duration, check_scopes, hash_secret, new_secret
from cyme.state.tokens import token_key


class LocalTokens:
    """Mixed into L{LocalOperations}: uses its C{store}, C{now},
    C{_next_version} and C{_log_change}."""

    async def list_tokens(self):
        return [t.public_json() for t in self.store.tokens()]

    async def create_token(self, values, wait=True):
        name = check_name(values.get("name"), "name")
        scopes = check_scopes(values.get("scope", values.get("scopes")))
        expires = values.get("expires")
        now = self.now()
        expires = None if expires in (None, "") else now + check_duration(expires)
        try:
            self.store.get_token(name)
        except NotFound:
            pass
        else:
            raise Conflict(f"token {name} exists: revoke it first", name=name)
        secret = new_secret()
        token = Token(name=name, scopes=scopes, hash=hash_secret(secret), created=now,
                      expires=expires)
        self.store.put_token(token, self._next_version(token_key(name)))
        self._log_change("token.create", token=name, scopes=",".join(scopes))
        return {**token.public_json(), "token": secret}, []

    async def revoke_token(self, name, wait=True):
        self.store.delete_token(check_name(name, "name"), self._next_version(token_key(name)))
        self._log_change("token.revoke", token=name)
        return []

    def authenticate(self, secret):
        token = self.store.find_token(secret)
        if token is None or token.expired(self.now()):
            return None
        return token


class ClusterTokens:
    """Mixed into L{ClusterOperations}: uses its C{local} and C{_replicated}."""

    async def list_tokens(self):
        return await self.local.list_tokens()

    async def create_token(self, values, wait=True):
        record, _ = await self.local.create_token(values)
        return record, await self._replicated(wait, token_key(record["name"]))

    async def revoke_token(self, name, wait=True):
        await self.local.revoke_token(name)
        return await self._replicated(wait, token_key(name))

    def authenticate(self, secret):
        return self.local.authenticate(secret)
