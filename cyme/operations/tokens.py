"""The token operations of the API (admin scope): make, list, revoke, check.

L{LocalTokens} is the part of L{cyme.operations.local.LocalOperations}
that works on this branch's store; L{ClusterTokens}, the part of
L{cyme.operations.cluster.ClusterOperations}, sends each change to every
live branch before answering, as it does for apps.  Whether a token name
is free is decided by one branch, the same for every branch that asks (the
name's coordinator, as for instances): of two creates of one name on two
branches at once, one gets a 409.  The secret of a new token is made by
the branch that was asked, is in the answer to its creation and nowhere
else: the store keeps its hash (L{cyme.state.tokens}), and only the hash
crosses the bus.
"""

from cyme.errors import BadRequest, Conflict, NotFound
from cyme.state.models import check_name
from cyme.state.tokens import Token, check_duration, check_scopes, hash_secret, new_secret
from cyme.state.tokens import token_key


class LocalTokens:
    """Mixed into L{LocalOperations}: uses its C{store}, C{now},
    C{_next_version} and C{_log_change}."""

    async def list_tokens(self):
        return [t.public_json() for t in self.store.tokens()]

    def new_token(self, values):
        """A token from the API's C{values}: C{(record, secret)}; nothing stored."""
        name = check_name(values.get("name"), "name")
        scopes = check_scopes(values.get("scope", values.get("scopes")))
        expires = values.get("expires")
        now = self.now()
        expires = None if expires in (None, "") else now + check_duration(expires)
        secret = new_secret()
        return Token(name=name, scopes=scopes, hash=hash_secret(secret), created=now,
                     expires=expires), secret

    def add_token(self, token):
        """Store the new C{token}; a 409 if its name is taken."""
        try:
            self.store.get_token(token.name)
        except NotFound:
            pass
        else:
            raise Conflict(f"token {token.name} exists: revoke it first", name=token.name)
        self.store.put_token(token, self._next_version(token_key(token.name)))
        self._log_change("token.create", token=token.name, scopes=",".join(token.scopes))

    async def create_token(self, values, wait=True):
        token, secret = self.new_token(values)
        self.add_token(token)
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
    """Mixed into L{ClusterOperations}: uses its C{local}, C{bus}, C{placement}
    and C{_replicated}."""

    async def list_tokens(self):
        return await self.local.list_tokens()

    def token_handlers(self):
        return {"token.add": self._add_remote}

    async def create_token(self, values, wait=True):
        token, secret = self.local.new_token(values)
        coordinator = self.placement.coordinator(token.name)
        if coordinator == self.bus.branch_id:
            missing = await self._add_token(token, wait)
        else:
            # Taken or not is the coordinator's to say, even without waiting
            # for the other branches.
            missing = await self.bus.call(coordinator, "token.add",
                                          {"token": token.to_json(), "wait": bool(wait)},
                                          2 * self.call_timeout)
        return {**token.public_json(), "token": secret}, missing

    async def _add_token(self, token, wait=True):
        self.local.add_token(token)
        return await self._replicated(wait, token_key(token.name))

    async def _add_remote(self, args, sender):
        try:
            token = Token.from_json(args["token"])
            wait = args.get("wait", True) is not False
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadRequest("token", "not a token record")
        return await self._add_token(token, wait)

    async def revoke_token(self, name, wait=True):
        await self.local.revoke_token(name)
        return await self._replicated(wait, token_key(name))

    def authenticate(self, secret):
        return self.local.authenticate(secret)
